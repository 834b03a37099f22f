"""The UNet compiled with torch.compile, in place: the LoRA swaps change its weights' values, never the graph.

The fuser adds a LoRA into the touched weights in place and restores them from pristine copies in place; the
compiled code reads the parameters as inputs (not frozen constants), so its guards (ids, shapes, dtypes) still hold
after any swap and nothing recompiles (tests/integration/gpu/engine/test_compiled_swaps.py counts it). Compiled in place
(`nn.Module.compile`), the module keeps its names, which the LoRA plans address. The warm-up puts a gate in front of
the compiled call (gpu/engine/compile_gate.py) and seals it: after that, a shape it did not warm runs eager, never
compiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from gpu.engine.compile_gate import CompileGate

CompileChoice = Literal["auto", "on", "off"]


def should_compile(choice: CompileChoice, device: torch.device) -> bool:
    """`auto` compiles on a GPU only: on a CPU the compile costs more than it saves for a worker's traffic."""
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def compile_unet(pipeline: Any, *, backend: str | Callable[..., Any] = "inductor", mode: str | None = None) -> None:
    """Compile the pipeline's UNet in place; the first denoising step pays the compile, later ones run its code.
    Shapes are static (one graph per image size and batch), which is what a worker serving a few sizes wants.
    `mode` is torch.compile's (None: its default; the benchmark compares the others)."""
    unet = pipeline.unet
    if unet.device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    unet.compile(backend=backend, dynamic=False, mode=mode)


def is_compiled(pipeline: Any) -> bool:
    return getattr(pipeline.unet, "_compiled_call_impl", None) is not None


def gate_compiled_unet(pipeline: Any) -> CompileGate:
    """The gate in front of the compiled UNet's call, put there (open) if it is not yet; the UNet must be compiled."""
    unet = pipeline.unet
    current = unet._compiled_call_impl
    if isinstance(current, CompileGate):
        return current
    assert current is not None, "gate_compiled_unet needs a compiled UNet"
    # The eager path is what `nn.Module.__call__` runs without a compiled call: `_call_impl`, hooks included.
    gate = CompileGate(current, unet._call_impl, int(getattr(pipeline, "vae_scale_factor", 8)))
    unet._compiled_call_impl = gate
    return gate


def compile_gate(pipeline: Any) -> CompileGate | None:
    """The compiled UNet's gate (what it warmed, what ran eager since), if it is compiled and gated."""
    current = getattr(pipeline.unet, "_compiled_call_impl", None)
    return current if isinstance(current, CompileGate) else None


def uncompile_unet(pipeline: Any) -> None:
    """Back to eager (the way `nn.Module.compile` is undone): for a compile that fails on this machine, so the
    worker serves slower rather than not at all."""
    pipeline.unet._compiled_call_impl = None
