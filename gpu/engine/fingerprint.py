"""A hash of every base weight of the pipeline: equal hashes mean bit-identical weights."""

import hashlib

import torch
from diffusers import StableDiffusionXLPipeline

FINGERPRINTED = ("unet", "text_encoder", "text_encoder_2", "vae")


def fingerprint_module(module: torch.nn.Module, digest: "hashlib._Hash") -> None:
    # Names are part of the hash, so a LoRA layer left behind (which renames weights to base_layer.*)
    # changes the fingerprint even if no number changed.
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1).contiguous()
        digest.update(flat.view(torch.uint8).cpu().numpy().tobytes())


def fingerprint_pipeline(pipeline: StableDiffusionXLPipeline) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the UNet, both text encoders and the VAE."""
    digest = hashlib.sha256()
    for component in FINGERPRINTED:
        digest.update(component.encode())
        fingerprint_module(getattr(pipeline, component), digest)
    return digest.hexdigest()
