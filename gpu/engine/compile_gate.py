"""The compiled UNet's gate: once the warm-up is over, a call of a shape it warmed runs the compiled code, any other
runs eager (counted, logged once per shape), so that no request ever pays for a compile.

torch's own guard alone would not do: `torch.compiler.set_stance("eager_on_recompile")` is a process-wide setting
(`torch._dynamo.eval_frame._stance`, a module global read each time a compiled function is entered) that also
covers a frame's first compile, but it falls back silently, with nothing to count; `"fail_on_recompile"` raises
instead, which would fail the request. So the gate decides by the call's shapes, counts what it sends to eager, and
calls the compiled code under "eager_on_recompile", only for that call, as a net for a guard its key does not model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

log = logging.getLogger("gpu.engine.compile_gate")

CallShape = tuple[object, ...]


def call_shape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallShape:
    """What the compiled code's static-shape guards tell calls apart by, as far as the worker varies them: the
    structure of the arguments, each tensor's shape, dtype and device, and plain values (None, bools, ints, str)."""
    leaves, spec = tree_flatten((args, kwargs))
    return (str(spec), *(_leaf(leaf) for leaf in leaves))


def _leaf(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), str(value.dtype), value.device.type)
    if value is None or isinstance(value, bool | int | str):
        return value
    return type(value).__name__


def shape_label(args: tuple[Any, ...], latent_scale: int) -> str:
    """The request behind a UNet call, for the log: image size, and whether it uses classifier-free guidance (the
    pipeline batches the unconditional and conditional latents: batch 2 for cfg > 1, batch 1 for cfg ≤ 1)."""
    sample = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if sample is None or sample.dim() != 4:
        return "a call of another shape"
    batch, _, height, width = sample.shape
    guidance = "cfg > 1" if batch == 2 else "cfg ≤ 1" if batch == 1 else f"batch {batch}"
    return f"{width * latent_scale}x{height * latent_scale} ({guidance}, UNet batch {batch})"


@dataclass(frozen=True)
class GateStats:
    """What the gate did: whether it is closed, the shapes warmed, and the UNet calls sent to eager since, per
    shape (one call per denoising step)."""

    sealed: bool
    warmed: tuple[str, ...]
    eager_calls: int
    eager_by_shape: dict[str, int]


class CompileGate:
    """Stands in for the UNet's compiled call (`_compiled_call_impl`). Open (the warm-up), every call runs the
    compiled code, which compiles a shape it has not seen, and the shape is remembered once the call succeeded.
    Sealed (serving), only remembered shapes run the compiled code; the others run the eager UNet."""

    def __init__(self, compiled: Callable[..., Any], eager: Callable[..., Any], latent_scale: int) -> None:
        self.compiled = compiled
        self._eager = eager
        self._latent_scale = latent_scale
        self._warmed: dict[CallShape, str] = {}
        self._eager_by_shape: dict[str, int] = {}
        self._lock = threading.Lock()  # the stats are read from other threads (a health endpoint)
        self.sealed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        shape = call_shape(args, kwargs)
        if not self.sealed:
            result = self.compiled(*args, **kwargs)
            with self._lock:
                self._warmed.setdefault(shape, shape_label(args, self._latent_scale))
            return result
        if shape in self._warmed:
            with torch.compiler.set_stance("eager_on_recompile"):
                return self.compiled(*args, **kwargs)
        label = shape_label(args, self._latent_scale)
        with self._lock:
            first = label not in self._eager_by_shape
            self._eager_by_shape[label] = self._eager_by_shape.get(label, 0) + 1
        if first:
            log.warning("UNet shape %s was not warmed up (WORKER_WARMUP_SIZES): running it eager, not compiling", label)
        return self._eager(*args, **kwargs)

    def seal(self) -> None:
        """From now on nothing compiles: the shapes seen so far run compiled, any other eager."""
        self.sealed = True
        log.info("compiled UNet sealed for %s; any other shape runs eager", ", ".join(self.stats().warmed) or "none")

    def stats(self) -> GateStats:
        with self._lock:
            by_shape = dict(self._eager_by_shape)
            warmed = tuple(dict.fromkeys(self._warmed.values()))
        return GateStats(self.sealed, warmed, sum(by_shape.values()), by_shape)
