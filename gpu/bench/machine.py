"""The machine a figure was measured on, named as the tables name it: the GPU's name, or the CPU model and cores."""

import os
import platform
from pathlib import Path

import torch


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {len(os.sched_getaffinity(0))} cores"
    except OSError:
        pass
    return platform.processor() or "cpu"
