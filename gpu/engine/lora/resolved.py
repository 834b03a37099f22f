"""A LoRA plan's layers resolved once to the pipeline's weight tensors, valid until the pipeline's modules change.

Resolving a layer is a `get_submodule` walk of 8–10 attribute lookups; a full-size LoRA has ~560 layers, and the fuse,
the restore and the check each walked them all on every request. A resolution is made once per plan and kept: it
holds each layer's weight (the Parameter itself, so in-place work on it is work on the model) and its pristine
original, grouped as the plan's fuse groups are.

What makes a resolution stale is the module tree changing under it, and each way is seen:
- a module on a layer's path given another child (`attn.to_q = other`, diffusers' adapter injection and unloading):
  torch's global module-registration hook fires; registrations into a watched module (one on a resolved path)
  advance `structure_generation`, others are ignored (diffusers slices `ModuleList`s in every UNet forward, which
  registers the slices' children into new lists);
- a weight replaced by a new Parameter, by `register_parameter`, assignment, or a direct `_parameters[...] = ...`
  (accelerate does that): `ResolvedPlan.is_current` checks each layer's parameter slot still holds the tensor resolved,
  one dict lookup per layer (~50 µs for 560 layers);
- a component replaced on the pipeline (`pipeline.unet = other`): its identity is checked.
In-place moves (`module.to(...)` swaps a Parameter's data but keeps the object) change none of these: the engine's
`to` forgets resolutions and pristine copies itself.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from gpu.engine.lora.formats.steps import WeightStep
from gpu.engine.lora.groups import FuseGroup, LayerKey

_generation = 0
_watched: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_hooks_installed = False
_install_lock = threading.Lock()


def _on_registration(module: nn.Module, *_: object) -> None:
    """A child module or a parameter was registered into `module`: if it is on a resolved path, resolutions made
    before may point at tensors no longer in the model."""
    global _generation
    if module in _watched:
        _generation += 1


def watch_module_changes() -> None:
    """Install the global registration hooks (once per process; until then nothing is counted)."""
    global _hooks_installed
    with _install_lock:
        if _hooks_installed:
            return
        torch_module.register_module_module_registration_hook(_on_registration)
        torch_module.register_module_parameter_registration_hook(_on_registration)
        _hooks_installed = True


def structure_generation() -> int:
    """How many registrations into watched modules the process has seen since the hooks were installed."""
    return _generation


@dataclass(frozen=True)
class ResolvedGroup:
    """One fuse group bound to the model: its layers' weights and their pristine originals, in the group's order."""

    group: FuseGroup
    weights: list[torch.Tensor]
    originals: list[torch.Tensor]
    # The shape every weight of the group has, or None when they differ (a conv and a linear of the same fan-in).
    shape: torch.Size | None

    @property
    def keys(self) -> tuple[LayerKey, ...]:
        return self.group.keys

    def layer_views(self, stack: torch.Tensor) -> list[torch.Tensor]:
        """A (layers, out, in × kernel area) stack as one view per layer, shaped like that layer's weight: one view
        and one unbind when the weights share a shape (always, for linear layers), else a view per layer."""
        if self.shape is not None:
            return list(stack.view(len(self.weights), *self.shape).unbind(0))
        return [row.view(weight.shape) for row, weight in zip(stack.unbind(0), self.weights, strict=True)]


@dataclass(frozen=True)
class ResolvedPlan:
    """A plan's groups bound to one pipeline, and each layer's (weight, original), as of one structure generation."""

    groups: tuple[ResolvedGroup, ...]
    # The plan's per-layer steps (gpu/engine/lora/formats), each with the weight it changes.
    steps: tuple[tuple[WeightStep, torch.Tensor], ...]
    pairs: dict[LayerKey, tuple[torch.Tensor, torch.Tensor]]
    components: tuple[int, ...]
    generation: int
    # (a module's parameter dict, the weight resolved from it): the slot must still hold that very tensor.
    slots: tuple[tuple[dict[str, Any], torch.Tensor], ...]

    def is_current(self, pipeline: Any, component_names: tuple[str, ...]) -> bool:
        """Still bound to this pipeline's modules: no registration on its paths since, the same component objects,
        and every weight still the one in its module's parameter slot."""
        return (
            self.generation == _generation
            and self.components == component_ids(pipeline, component_names)
            and all(slot.get("weight") is weight for slot, weight in self.slots)
        )


def component_ids(pipeline: Any, names: tuple[str, ...]) -> tuple[int, ...]:
    """The identity of each named component (a component swapped for another object is not a registration)."""
    return tuple(id(getattr(pipeline, name, None)) for name in names)


def module_path(root: nn.Module, path: str) -> list[nn.Module]:
    """Every module from `root` down to the one `path` names (`get_submodule`'s walk, keeping the way)."""
    chain = [root]
    for atom in path.split(".") if path else []:
        child = getattr(chain[-1], atom)
        if not isinstance(child, nn.Module):
            raise AttributeError(f"{path}: {atom} is not a module")
        chain.append(child)
    return chain


def _owner_slot(module: nn.Module, weight: torch.Tensor) -> dict[str, Any]:
    """The parameter dict that holds `weight`: the module's own, or (an adapter wrapping the layer, whose `weight`
    property forwards to the wrapped layer) the wrapped layer's."""
    for candidate in (module, getattr(module, "base_layer", None)):
        if isinstance(candidate, nn.Module) and candidate._parameters.get("weight") is weight:
            return candidate._parameters
    # Not found in a parameter dict: a slot that never matches makes every use resolve again (slow, never wrong).
    return {}


def resolve_plan(
    pipeline: Any,
    plan_groups: tuple[FuseGroup, ...],
    plan_steps: tuple[WeightStep, ...],
    component_names: tuple[str, ...],
    original_of: Callable[[LayerKey, torch.Tensor], torch.Tensor],
) -> ResolvedPlan:
    """Bind each group's layers, and each step's, to the pipeline's weights, taking (or reusing) each layer's pristine
    original."""
    pairs: dict[LayerKey, tuple[torch.Tensor, torch.Tensor]] = {}
    slots: list[tuple[dict[str, Any], torch.Tensor]] = []

    def bind(key: LayerKey) -> tuple[torch.Tensor, torch.Tensor]:
        if key in pairs:
            # Two changes to one layer would each start from the original in a staged fuse: never built so.
            raise ValueError(f"a LoRA plan names layer {key[0]}.{key[1]} twice")
        chain = module_path(getattr(pipeline, key[0]), key[1])
        weight: torch.Tensor = chain[-1].weight  # type: ignore[assignment]  # checked Linear/Conv2d by the plan
        original = original_of(key, weight)
        _watched.update(chain)
        slots.append((_owner_slot(chain[-1], weight), weight))
        pairs[key] = (weight, original)
        return weight, original

    groups = []
    for group in plan_groups:
        bound = [bind(key) for key in group.keys]
        weights, originals = [w for w, _ in bound], [o for _, o in bound]
        shape = weights[0].shape
        uniform = all(weight.shape == shape for weight in weights)
        groups.append(ResolvedGroup(group, weights, originals, shape if uniform else None))
    steps = tuple((step, bind(step.key)[0]) for step in plan_steps)
    return ResolvedPlan(
        tuple(groups), steps, pairs, component_ids(pipeline, component_names), structure_generation(), tuple(slots)
    )
