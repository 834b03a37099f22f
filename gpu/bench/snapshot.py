"""A copy of every base weight, kept where the weights are, to tell after any phase whether they are bit-identical.

The sha256 fingerprint (gpu/engine/fingerprint.py) reads ~7 GB of full-size SDXL through the host and a hash, about
10 s each time; the benchmark used to take five. This copy is made once (on the GPU when it has room, else in host
memory) and each comparison is a bitwise equality per tensor on the device: a fraction of a second. Bits, not
values: -0.0 and 0.0, or two NaNs, compare as what they are.
"""

from __future__ import annotations

import torch

from gpu.engine.fingerprint import FINGERPRINTED

_SAME_WIDTH_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().view(_SAME_WIDTH_INTS[tensor.element_size()])


class WeightSnapshot:
    """The state dicts of the UNet, both text encoders and the VAE, as they were when taken."""

    def __init__(self, pipeline: object) -> None:
        self.pipeline = pipeline
        tensors = self._current()
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        device = next(iter(tensors.values())).device
        # On a GPU with room for the copy and as much again to spare, keep it there; else in host memory.
        keep_on_device = device.type != "cuda" or torch.cuda.mem_get_info(device)[0] > 2 * total
        self.location = "device" if keep_on_device else "host"
        self._copies = {
            name: tensor.detach().to("cpu" if not keep_on_device else tensor.device, copy=True)
            for name, tensor in tensors.items()
        }
        self.nbytes = total

    def _current(self) -> dict[str, torch.Tensor]:
        return {
            f"{component}.{name}": tensor
            for component in FINGERPRINTED
            for name, tensor in getattr(self.pipeline, component).state_dict().items()
        }

    def changed(self) -> list[str]:
        """The tensors whose name set, dtype, shape or bits differ from the snapshot (empty: bit-identical)."""
        current = self._current()
        if set(current) != set(self._copies):
            return sorted(set(current) ^ set(self._copies))
        changed = []
        for name, tensor in current.items():
            copy = self._copies[name]
            same_kind = tensor.dtype == copy.dtype and tensor.shape == copy.shape
            if not same_kind or not torch.equal(_bits(tensor.to(copy.device)), _bits(copy)):
                changed.append(name)
        return changed

    def identical(self) -> bool:
        return not self.changed()
