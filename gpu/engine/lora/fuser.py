"""Fuse a LoRA plan into the base weights for one request, and restore them bit for bit from pristine copies.

Fusing costs one batched matmul per group of same-shaped layers and adds nothing to each denoising step;
restoring copies the untouched originals back, so the base weights are exactly what they were (an unfuse by
subtraction in fp16/bf16 would leave rounding residue). Both work a group of layers per call (`torch._foreach_*`),
not a layer: a full-size LoRA touches ~560 layers, and on a GPU what a swap costs is the host's work to launch
kernels, not arithmetic. So the plan's layers are resolved to the model's weight tensors once per plan
(gpu/engine/lora/resolved.py), the scale goes into the matmul, and the full comparison after a restore is a rotating
sample on a GPU (gpu/engine/lora/restore_check.py).

The fused weight is `round(weight + update)`: the fp32 update added to the weight in fp32 and rounded once to the
weight's dtype. Two ways give those bits:
- `direct`: `_foreach_add_(weights, fp32 updates)`. With fp16/bf16 weights the lists' dtypes differ and torch's
  foreach add takes its per-tensor path (one kernel per layer), but the update is read once.
- `staged`: the group's pristine originals copied into an fp32 workspace, the updates added there by the batched
  matmul itself (`baddbmm_`), the result copied into the weights, rounding once: each step a single foreach kernel or
  matmul per group (`_foreach_copy_` is the one foreach op that takes its fast path across dtypes), at the price of
  about two more passes over an fp32 workspace than `direct`.
`auto` stages on a GPU for half-precision weights and adds directly elsewhere (on a CPU there are no launches to save,
and with fp32 weights the direct add is already one foreach kernel).
"""

from __future__ import annotations

import weakref
from typing import Literal

import torch

from gpu.engine.errors import lora_load_failed
from gpu.engine.lora.groups import LayerKey
from gpu.engine.lora.plan import COMPONENTS, LoraPlan
from gpu.engine.lora.resolved import (
    ResolvedGroup,
    ResolvedPlan,
    resolve_plan,
    watch_module_changes,
)
from gpu.engine.lora.restore_check import (
    SAMPLE_LAYERS,
    RestoreCheck,
    RotatingSample,
    batched_differences,
    check_is_sampled,
    each_difference,
)

# Layers copied back per `_copy_back` call: one foreach copy each (the foreach kernels chunk lists themselves).
RESTORE_BATCH = 1024

FuseAdd = Literal["auto", "direct", "staged"]


def adds_staged(choice: FuseAdd, weight: torch.Tensor) -> bool:
    """Whether to fuse through an fp32 workspace (see the module's docstring)."""
    return choice == "staged" or (choice == "auto" and weight.device.type == "cuda" and weight.dtype != torch.float32)


class LoraFuser:
    """One LoRA slot over a pipeline: fuse, then restore. Pristine copies are taken once per layer, when a plan that
    touches it is first resolved."""

    def __init__(
        self,
        pipeline: object,
        pristine_device: str = "same",
        restore_batch: int = RESTORE_BATCH,
        fuse_add: FuseAdd = "auto",
        check: RestoreCheck = "auto",
        check_sample: int = SAMPLE_LAYERS,
    ) -> None:
        self.pipeline = pipeline
        # "same": keep originals beside the weights (fastest restore); "cpu": spare GPU memory.
        self.pristine_device = pristine_device
        self.restore_batch = restore_batch
        self.fuse_add = fuse_add
        self.check = check
        self._sample = RotatingSample(check_sample)
        # Each layer's original, and a weak reference to the weight it was copied from.
        self._pristine: dict[LayerKey, torch.Tensor] = {}
        self._pristine_source: dict[LayerKey, weakref.ref[torch.Tensor]] = {}
        # id(plan) -> (a weak reference to the plan, its resolution): a resolution lives as long as its plan.
        self._resolutions: dict[int, tuple[weakref.ref[LoraPlan], ResolvedPlan]] = {}
        # (weight, original) of each layer of the plan fused last: what `restore` writes to, and from.
        self._live: dict[LayerKey, tuple[torch.Tensor, torch.Tensor]] = {}
        # Layers changed by `fuse` and not yet copied back (a layer may be listed twice: restoring is idempotent).
        self._touched: list[LayerKey] = []
        # Layers copied back whose comparison with the original has not run yet.
        self._unverified: list[LayerKey] = []
        watch_module_changes()

    def _weight(self, component: str, path: str) -> torch.Tensor:
        """The layer's weight, found by walking the module tree (what a resolution does once per plan)."""
        weight: torch.Tensor = getattr(self.pipeline, component).get_submodule(path).weight
        return weight

    def _keep_pristine(self, key: LayerKey, weight: torch.Tensor) -> torch.Tensor:
        """The layer's pristine original: the copy taken before, if it was taken of this very tensor (a weight
        replaced since, or a layer or component put in another's place, is copied again), else a new copy."""
        source = self._pristine_source.get(key)
        if source is not None and source() is weight:
            return self._pristine[key]
        copy = weight.detach().to("cpu" if self.pristine_device == "cpu" else weight.device, copy=True)
        original = copy.pin_memory() if copy.device.type == "cpu" and torch.cuda.is_available() else copy
        self._pristine[key], self._pristine_source[key] = original, weakref.ref(weight)
        return original

    @property
    def pristine_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._pristine.values())

    @property
    def resolved_plans(self) -> int:
        """Plans resolved and still alive (the benchmark and the leak tests read it)."""
        return len(self._resolutions)

    def forget(self) -> None:
        """Drop every resolution and pristine copy (the pipeline moved, or its weights were replaced); refused while a
        LoRA is fused, since its originals would be lost."""
        if self._touched:
            raise RuntimeError("a LoRA is fused: restore before forgetting the originals")
        self._resolutions.clear()
        self._pristine.clear()
        self._pristine_source.clear()
        self._live = {}

    def resolve(self, plan: LoraPlan) -> ResolvedPlan:
        """The plan bound to this pipeline's weights: made once per plan, again only after the modules changed."""
        entry = self._resolutions.get(id(plan))
        if entry is not None and entry[0]() is plan and entry[1].is_current(self.pipeline, COMPONENTS):
            return entry[1]
        # Nothing is fused while a plan is resolved: the weights are pristine, and originals of replaced ones are
        # taken again from them (`_keep_pristine`).
        resolved = self._resolve(plan)
        key = id(plan)
        resolutions = self._resolutions

        def forget_plan(ref: weakref.ref[LoraPlan]) -> None:
            # The plan is gone (evicted from the memory cache): so is its resolution, and what it held.
            if resolutions.get(key, (None,))[0] is ref:
                del resolutions[key]

        self._resolutions[key] = (weakref.ref(plan, forget_plan), resolved)
        return resolved

    def _resolve(self, plan: LoraPlan) -> ResolvedPlan:
        return resolve_plan(self.pipeline, plan.fuse_groups(), plan.steps, COMPONENTS, self._keep_pristine)

    @torch.no_grad()
    def fuse(self, plan: LoraPlan, scale: float) -> int:
        """Add every delta of the plan (times scale) into its layer; returns the number of layers changed."""
        if self._touched:
            raise RuntimeError("a LoRA is already fused: restore first")
        resolved = self.resolve(plan)
        self._live = resolved.pairs
        for group in resolved.groups:
            # Listed before any is changed: a failure (or an interruption) from here on leaves them to restore.
            self._touched.extend(group.keys)
            self._add(group, scale)
        self._apply_steps(resolved, scale)
        if not self._touched:
            raise lora_load_failed("LoRA attached to no layer of SDXL")
        return len(self._touched)

    def _add(self, resolved: ResolvedGroup, scale: float) -> None:
        """weight = round(weight + update) for every layer of the group, the update computed in fp32."""
        weights, group = resolved.weights, resolved.group
        if adds_staged(self.fuse_add, weights[0]):
            shape = (group.up.shape[0], group.up.shape[1], group.down.shape[2])
            workspace = torch.empty(shape, dtype=torch.float32, device=weights[0].device)
            views = resolved.layer_views(workspace)
            torch._foreach_copy_(views, resolved.originals)
            group.add_updates_to(workspace, scale)
            torch._foreach_copy_(weights, views)
        else:
            # In place with the fp32 updates: rounded once to the weight's dtype, the same bits as
            # (weight.float() + update).to(dtype) without a full fp32 copy of each weight.
            torch._foreach_add_(weights, resolved.layer_views(group.updates(scale, weights[0].device)))

    def _apply_steps(self, resolved: ResolvedPlan, scale: float) -> None:
        """The plan's per-layer steps (DoRA, dense LoHa/LoKr: gpu/engine/lora/formats), each on a layer no group
        touched, its weight resolved and its pristine copy taken with the plan, listed as touched before it changes,
        as the groups' layers are."""
        for step, weight in resolved.steps:
            self._touched.append(step.key)
            step.apply(weight, scale)

    @property
    def pending(self) -> list[str]:
        """The layers still fused (touched and not yet copied back): empty once a restore completed."""
        return [f"{c}.{p}" for c, p in dict.fromkeys(self._touched)]

    @property
    def pending_count(self) -> int:
        """How many entries are still to copy back (0 once a restore completed): `pending` without its strings."""
        return len(self._touched)

    def _copy_back(self, keys: list[LayerKey]) -> None:
        """Copy these layers' pristine originals over them (exact), in one foreach copy; from host memory a copy
        per layer (the transfers dominate there, and the foreach kernels are made for lists on one device)."""
        live = self._live
        weights = [live[key][0] for key in keys]
        originals = [live[key][1] for key in keys]
        if self.pristine_device == "cpu":
            for weight, original in zip(weights, originals, strict=True):
                weight.copy_(original)
        else:
            torch._foreach_copy_(weights, originals)

    def _altered(self, keys: list[LayerKey]) -> list[str]:
        """The layers that differ from their originals."""
        live = self._live
        weights = [live[key][0] for key in keys]
        originals = [live[key][1] for key in keys]
        on_gpu = bool(weights) and weights[0].device.type == "cuda"
        differs = (batched_differences if on_gpu else each_difference)(weights, originals)
        return [f"{c}.{p}" for (c, p), bad in zip(keys, differs, strict=True) if bad]

    @torch.no_grad()
    def restore(self) -> list[str]:
        """Copy every touched layer back from its pristine original; return the layers that still differ.

        Safe against an exception raised at any line of it (Modal's `InputCancellation` is a BaseException raised
        by a signal handler wherever the code is): a layer leaves the pending list only after it was copied back,
        and is verified before it leaves the unverified one, so calling `restore` again finishes the job.

        The comparison is a guard against a bug, not against rounding: copy_ is exact. On a GPU it compares a
        rotating sample of the restored layers; it is skipped when the originals live on the CPU, where it would
        cost a transfer of every touched layer.
        """
        while self._touched:
            batch = list(dict.fromkeys(self._touched[-self.restore_batch :]))
            self._copy_back(batch)
            self._unverified.extend(batch)
            del self._touched[-self.restore_batch :]
        if self.pristine_device == "cpu" or not self._unverified:
            self._unverified.clear()
            return []
        keys = list(dict.fromkeys(self._unverified))
        if check_is_sampled(self.check, self._live[keys[0]][0].device):
            # Replaced, not trimmed, so an interruption leaves either the full list or the sample to verify.
            keys = self._unverified = self._sample.pick(keys)
        altered = self._altered(keys)
        self._unverified.clear()
        return altered
