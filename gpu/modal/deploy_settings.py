"""What the deploying shell tells `modal deploy gpu/modal/app.py`, read without ever failing the import: a bad or
missing value becomes a problem that only a deploy refuses on (tests and the web endpoints import the app freely)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gpu.serve.image_sizes import parse_sizes

DEFAULT_APP_NAME = "vixenbliss-sdxl-lora"
DEFAULT_GPU = "H100"
# Off by default: a restored container would spend its cold start tracing the UNet (cache hits or not) for a warm
# gain the GPU benchmark has yet to measure (docs/worker.md § Compiled UNet).
DEFAULT_WORKER_COMPILE = "off"
DEFAULT_WARMUP_SIZES = "1024x1024"
# `on` for the fp16-fix VAE that gpu/modal/weights.py installs: it decodes in fp16 without overflowing, and `on` does
# not depend on its config's `force_upcast` (diffusers defaults that to true where a config leaves it out, which would
# send `auto` to the fp32 decode for every image). An overflow is still caught and decoded again in fp32.
DEFAULT_WORKER_VAE_HALF = "on"
VAE_HALF_CHOICES = ("on", "auto", "off")


class DeployRefusedError(RuntimeError):
    """`modal deploy` was asked for an app that would not work; the message names every variable at fault."""


@dataclass(frozen=True)
class DeploySettings:
    """The app's deploy-time choices and what is wrong with them."""

    app_name: str = DEFAULT_APP_NAME
    gpu: str = DEFAULT_GPU
    min_containers: int = 0
    max_containers: int = 10
    # The hosts presigned LoRA URLs may come from (the R2 endpoint's), baked into the image's environment.
    lora_allowed_hosts: str = ""
    # WORKER_COMPILE and WORKER_WARMUP_SIZES of the GPU image (gpu/serve/settings.py).
    worker_compile: str = DEFAULT_WORKER_COMPILE
    warmup_sizes: str = DEFAULT_WARMUP_SIZES
    # WORKER_VAE_HALF of the GPU image (gpu/engine/decode.py): `auto` for a Volume filled otherwise, with SDXL's own
    # VAE.
    worker_vae_half: str = DEFAULT_WORKER_VAE_HALF
    problems: tuple[str, ...] = field(default=())


def read(env: Mapping[str, str]) -> DeploySettings:
    """The settings from `env`; an unusable value keeps its default and is listed in `problems`."""
    problems: list[str] = []

    def count(name: str, default: int, low: int) -> int:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        if not raw.isdigit() or int(raw) < low:
            problems.append(f"{name} must be a whole number ≥ {low}, not {raw!r}")
            return default
        return int(raw)

    minimum = count("MODAL_MIN_CONTAINERS", 0, 0)
    maximum = count("MODAL_MAX_CONTAINERS", 10, 1)
    if maximum < minimum:
        problems.append(f"MODAL_MAX_CONTAINERS ({maximum}) is below MODAL_MIN_CONTAINERS ({minimum})")
    hosts = ",".join(h.strip() for h in env.get("LORA_ALLOWED_HOSTS", "").split(",") if h.strip())
    if not hosts:
        # Production mode fetches LoRAs only from allow-listed https hosts: with none, every generation with a LoRA
        # would fail (LORA_DOWNLOAD_FAILED) once deployed.
        problems.append(
            "LORA_ALLOWED_HOSTS is empty: set the R2 endpoint's host (e.g. <account>.r2.cloudflarestorage.com)"
        )
    compile_choice = env.get("MODAL_WORKER_COMPILE", "").strip().lower() or DEFAULT_WORKER_COMPILE
    if compile_choice not in ("on", "off"):
        problems.append(f"MODAL_WORKER_COMPILE must be on or off, not {compile_choice!r}")
        compile_choice = DEFAULT_WORKER_COMPILE
    warmup_sizes = env.get("MODAL_WARMUP_SIZES", DEFAULT_WARMUP_SIZES).strip()
    problem = _sizes_problem(warmup_sizes)
    if problem:
        problems.append(f"MODAL_WARMUP_SIZES: {problem}")
        warmup_sizes = DEFAULT_WARMUP_SIZES
    vae_half = env.get("MODAL_WORKER_VAE_HALF", "").strip().lower() or DEFAULT_WORKER_VAE_HALF
    if vae_half not in VAE_HALF_CHOICES:
        problems.append(f"MODAL_WORKER_VAE_HALF must be on, auto or off, not {vae_half!r}")
        vae_half = DEFAULT_WORKER_VAE_HALF
    return DeploySettings(
        app_name=env.get("MODAL_APP_NAME", "").strip() or DEFAULT_APP_NAME,
        gpu=env.get("MODAL_GPU", "").strip() or DEFAULT_GPU,
        min_containers=minimum,
        max_containers=maximum,
        lora_allowed_hosts=hosts,
        worker_compile=compile_choice,
        warmup_sizes=warmup_sizes,
        worker_vae_half=vae_half,
        problems=tuple(problems),
    )


def _sizes_problem(raw: str) -> str | None:
    """What is wrong with these warm-up sizes (checked at deploy, not in the GPU container), or None."""
    try:
        parse_sizes(raw)
    except ValueError as error:
        return str(error)
    return None


def deploying(argv: Sequence[str]) -> bool:
    """Whether this process is the Modal CLI deploying (`modal deploy …`), not a test or a container importing."""
    return len(argv) > 1 and argv[0].rsplit("/", 1)[-1] == "modal" and argv[1] == "deploy"


def refuse_a_broken_deploy(settings: DeploySettings, argv: Sequence[str] = tuple(sys.argv)) -> None:
    """Raise DeployRefusedError, naming every problem, when `modal deploy` runs with them; else nothing."""
    if settings.problems and deploying(argv):
        raise DeployRefusedError("not deploying: " + "; ".join(settings.problems))
