"""The swap alone: fuse and restore timed apart, each with its host (dispatch) share, for today's fuser in each of its
ways beside the one it replaced (gpu/bench/swap_before.py), on the same model and LoRAs, alternating between them.

Wall time waits for the device (a synchronisation after the call); host time is the call's own time without it,
which on a GPU is the time to dispatch and launch, and on a CPU is everything. On the `meta` device nothing runs
and nothing is stored, so a meta run is the host's dispatch cost alone (Python, the dispatcher, no kernels, no
launches), of any model size. Ops are the operators dispatched from Python per call (a foreach op counts once);
kernels (on a GPU only) are what the profiler saw launched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gpu.bench.compare import synchronize
from gpu.bench.swap_before import FuserBefore
from gpu.engine.lora.fuser import LoraFuser
from gpu.engine.lora.groups import LayerKey
from gpu.engine.lora.plan import LoraPlan, grouped, pinned

SCALES = (0.9, 0.6)


class Swapper(Protocol):
    def fuse(self, plan: LoraPlan, scale: float) -> int: ...

    def restore(self) -> list[str]: ...


class _OpCounter(TorchDispatchMode):
    """Counts the operators dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _queue_comparisons(weights: list[torch.Tensor], originals: list[torch.Tensor]) -> list[bool]:
    """On meta tensors: the check's comparisons dispatched as on a GPU, their answer not read (meta holds no data)."""
    if weights:
        torch.stack([torch.ne(w, o).any() for w, o in zip(weights, originals, strict=True)])
    return [False] * len(weights)


class MetaFuser(LoraFuser):
    """Today's fuser on meta tensors: its check dispatched but not read (see `_queue_comparisons`)."""

    def _altered(self, keys: list[LayerKey]) -> list[str]:
        _queue_comparisons([self._live[k][0] for k in keys], [self._live[k][1] for k in keys])
        return []


class MetaFuserBefore(FuserBefore):
    """The replaced fuser on meta tensors, its full check dispatched as on a GPU but not read."""

    def _altered(self, keys: list[LayerKey]) -> list[str]:
        _queue_comparisons([self._weight(*k) for k in keys], [self._pristine[k] for k in keys])
        return []


@dataclass(frozen=True)
class Variant:
    """A way to swap: how to make its fuser over a pipeline, and the group size cap its plans are stacked with."""

    name: str
    make: Callable[[object], Swapper]
    group_bytes: int


def variants(names: Sequence[str], device: torch.device, group_bytes: int) -> list[Variant]:
    """`before`, `direct`, `staged`, `auto` (the worker's default), on this device; each plan stacked under
    `group_bytes`. On meta the GPU's choices are made explicitly (sampled check), as `auto` cannot see a GPU there."""
    meta = device.type == "meta"
    made: dict[str, Callable[[object], Swapper]] = {
        "before": MetaFuserBefore if meta else FuserBefore,
        "direct": lambda p: (MetaFuser if meta else LoraFuser)(
            p, fuse_add="direct", check="sampled" if meta else "auto"
        ),
        "staged": lambda p: (MetaFuser if meta else LoraFuser)(
            p, fuse_add="staged", check="sampled" if meta else "auto"
        ),
        "auto": lambda p: LoraFuser(p),
    }
    return [Variant(name, made[name], group_bytes) for name in names]


def regrouped(plan: LoraPlan, group_bytes: int, device: torch.device) -> LoraPlan:
    """The plan's deltas stacked under this cap (pinned for a GPU, as the engine's are)."""
    plan = grouped(plan.deltas, group_bytes)
    return pinned(plan) if device.type == "cuda" else plan


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(ordered[len(ordered) // 2], 3),
        "p90": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 3),
        "n": len(ordered),
    }


def _kernels(call: Callable[[], object]) -> int | None:
    """CUDA kernels the profiler saw one call launch (None off a GPU, or when the profiler is unavailable)."""
    if not torch.cuda.is_available():
        return None
    try:
        from torch._C._autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
        return sum(1 for event in prof.events() if event.device_type == DeviceType.CUDA)
    except Exception:  # a profiler that cannot start here only costs this one figure
        return None


def measure(
    variant: Variant, pipeline: object, plans: Sequence[LoraPlan], device: torch.device, runs: int
) -> dict[str, Any]:
    """Fuse then restore `runs` times, alternating over the plans and two scales, after one warm swap per plan."""
    fuser = variant.make(pipeline)
    stacked = [regrouped(plan, variant.group_bytes, device) for plan in plans]
    for plan in stacked:  # pristine copies, resolutions: what a worker has done before its cached swaps
        fuser.fuse(plan, SCALES[0])
        fuser.restore()
    fuse_wall, fuse_host, restore_wall, restore_host, altered = [], [], [], [], 0
    for index in range(runs):
        plan, scale = stacked[index % len(stacked)], SCALES[index % 2]
        synchronize(device)
        started = time.perf_counter()
        fuser.fuse(plan, scale)
        returned = time.perf_counter()
        synchronize(device)
        fused = time.perf_counter()
        altered += len(fuser.restore())
        restored = time.perf_counter()
        synchronize(device)
        done = time.perf_counter()
        fuse_host.append((returned - started) * 1000)
        fuse_wall.append((fused - started) * 1000)
        restore_host.append((restored - fused) * 1000)
        restore_wall.append((done - fused) * 1000)
    with _OpCounter() as fuse_ops:
        fuser.fuse(stacked[0], SCALES[0])
    with _OpCounter() as restore_ops:
        fuser.restore()
    kernels_fuse = _kernels(lambda: fuser.fuse(stacked[0], SCALES[0]))
    kernels_restore = _kernels(fuser.restore)
    fuser.restore()  # a no-op, unless a profiler failure above left the LoRA fused
    synchronize(device)
    return {
        "groups": len(stacked[0].fuse_groups()),
        "layers": len(stacked[0].deltas),
        "fuse_ms": _summary(fuse_wall),
        "fuse_host_ms": _summary(fuse_host),
        "restore_ms": _summary(restore_wall),
        "restore_host_ms": _summary(restore_host),
        "swap_ms": _summary([f + r for f, r in zip(fuse_wall, restore_wall, strict=True)]),
        "ops_fuse": fuse_ops.ops,
        "ops_restore": restore_ops.ops,
        "kernels_fuse": kernels_fuse,
        "kernels_restore": kernels_restore,
        "layers_reported_altered": altered,
    }


def swap_phase(
    pipeline: object, plans: Sequence[LoraPlan], device: torch.device, runs: int, chosen: Sequence[Variant]
) -> dict[str, Any]:
    """Every variant on the same pipeline and plans, one after the other (each leaves the weights as found)."""
    return {variant.name: measure(variant, pipeline, plans, device, runs) for variant in chosen}
