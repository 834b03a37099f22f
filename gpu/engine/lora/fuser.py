"""Fuse a LoRA plan into the base weights for one request, and restore them bit for bit from pristine copies.

Fusing costs one batched matmul per group of same-shaped layers and adds nothing to each denoising step;
restoring copies the untouched originals back, so the base weights are exactly what they were (an unfuse by
subtraction in fp16/bf16 would leave rounding residue). Both work a group of layers per call (`torch._foreach_*`),
not a layer: a full-size LoRA touches ~560 layers, and kernel launches, not arithmetic, are what a swap costs.
"""

import torch

from gpu.engine.errors import lora_load_failed
from gpu.engine.lora.groups import LayerKey
from gpu.engine.lora.plan import LoraPlan

# Layers copied back per `_copy_back` call: one foreach copy each (the foreach kernels chunk lists themselves).
RESTORE_BATCH = 1024


class LoraFuser:
    """One LoRA slot over a pipeline: fuse, then restore. Pristine copies are taken once per layer, lazily."""

    def __init__(self, pipeline: object, pristine_device: str = "same", restore_batch: int = RESTORE_BATCH) -> None:
        self.pipeline = pipeline
        # "same": keep originals beside the weights (fastest restore); "cpu": spare GPU memory.
        self.pristine_device = pristine_device
        self.restore_batch = restore_batch
        self._pristine: dict[LayerKey, torch.Tensor] = {}
        # Layers changed by `fuse` and not yet copied back (a layer may be listed twice: restoring is idempotent).
        self._touched: list[LayerKey] = []
        # Layers copied back whose comparison with the original has not run yet.
        self._unverified: list[LayerKey] = []

    def _weight(self, component: str, path: str) -> torch.Tensor:
        weight: torch.Tensor = getattr(self.pipeline, component).get_submodule(path).weight
        return weight

    def _keep_pristine(self, key: LayerKey, weight: torch.Tensor) -> None:
        if key in self._pristine:
            return
        copy = weight.detach().to("cpu" if self.pristine_device == "cpu" else weight.device, copy=True)
        self._pristine[key] = copy.pin_memory() if copy.device.type == "cpu" and torch.cuda.is_available() else copy

    @property
    def pristine_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._pristine.values())

    @torch.no_grad()
    def fuse(self, plan: LoraPlan, scale: float) -> int:
        """Add every delta of the plan (times scale) into its layer; returns the number of layers changed."""
        if self._touched:
            raise RuntimeError("a LoRA is already fused: restore first")
        for group in plan.fuse_groups():
            weights = [self._weight(*key) for key in group.keys]
            for key, weight in zip(group.keys, weights, strict=True):
                self._keep_pristine(key, weight)
            # Listed before any is changed: a failure (or an interruption) from here on leaves them to restore.
            self._touched.extend(group.keys)
            updates = group.updates(scale, weights[0].device)
            # In place with the fp32 updates: rounded once to the weight's dtype, the same bits as
            # (weight.float() + update).to(dtype) without a full fp32 copy of each weight.
            torch._foreach_add_(weights, [u.view(w.shape) for u, w in zip(updates, weights, strict=True)])
        self._apply_steps(plan, scale)
        if not self._touched:
            raise lora_load_failed("LoRA attached to no layer of SDXL")
        return len(self._touched)

    def _apply_steps(self, plan: LoraPlan, scale: float) -> None:
        """The plan's per-layer steps (DoRA, dense LoHa/LoKr: gpu/engine/lora/formats), each on a layer no group
        touched, kept pristine and listed as touched before it changes, as the groups' layers are."""
        for step in plan.steps:
            weight = self._weight(*step.key)
            self._keep_pristine(step.key, weight)
            self._touched.append(step.key)
            step.apply(weight, scale)

    @property
    def pending(self) -> list[str]:
        """The layers still fused (touched and not yet copied back): empty once a restore completed."""
        return [f"{c}.{p}" for c, p in dict.fromkeys(self._touched)]

    def _copy_back(self, keys: list[LayerKey]) -> None:
        """Copy these layers' pristine originals over them (exact), in one foreach copy; from host memory a copy
        per layer (the transfers dominate there, and the foreach kernels are made for lists on one device)."""
        weights = [self._weight(*key) for key in keys]
        originals = [self._pristine[key] for key in keys]
        if self.pristine_device == "cpu":
            for weight, original in zip(weights, originals, strict=True):
                weight.copy_(original)
        else:
            torch._foreach_copy_(weights, originals)

    def _altered(self, keys: list[LayerKey]) -> list[str]:
        """The layers that differ from their originals."""
        weights = [self._weight(*key) for key in keys]
        originals = [self._pristine[key] for key in keys]
        on_gpu = bool(weights) and weights[0].device.type == "cuda"
        differs = (batched_differences if on_gpu else each_difference)(weights, originals)
        return [f"{c}.{p}" for (c, p), bad in zip(keys, differs, strict=True) if bad]

    @torch.no_grad()
    def restore(self) -> list[str]:
        """Copy every touched layer back from its pristine original; return the layers that still differ.

        Safe against an exception raised at any line of it (Modal's `InputCancellation` is a BaseException raised
        by a signal handler wherever the code is): a layer leaves the pending list only after it was copied back,
        and is verified before it leaves the unverified one, so calling `restore` again finishes the job.

        The comparison is a guard against a bug, not against rounding: copy_ is exact. It is skipped when the
        originals live on the CPU, where it would cost a transfer of every touched layer.
        """
        while self._touched:
            batch = list(dict.fromkeys(self._touched[-self.restore_batch :]))
            self._copy_back(batch)
            self._unverified.extend(batch)
            del self._touched[-self.restore_batch :]
        if self.pristine_device == "cpu":
            self._unverified.clear()
            return []
        altered = self._altered(list(dict.fromkeys(self._unverified)))
        self._unverified.clear()
        return altered


def batched_differences(weights: list[torch.Tensor], originals: list[torch.Tensor]) -> list[bool]:
    """Which weights differ from their originals: every comparison queued, then one synchronisation (a GPU's way;
    per-layer `torch.equal` would wait on the device 560 times)."""
    if not weights:
        return []
    flags = torch.stack([torch.ne(w, o).any() for w, o in zip(weights, originals, strict=True)])
    return [bool(flag) for flag in flags.tolist()]


def each_difference(weights: list[torch.Tensor], originals: list[torch.Tensor]) -> list[bool]:
    """Which weights differ, one `torch.equal` each (a CPU's way: it stops at the first differing element)."""
    return [not torch.equal(w, o) for w, o in zip(weights, originals, strict=True)]
