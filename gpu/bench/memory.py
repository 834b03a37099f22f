"""What the process holds, three ways: resident memory (the OS's view), bytes in use by the C heap (torch's CPU
tensors live there), and bytes allocated on the GPU by torch's caching allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from functools import cache

import torch

_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2`: every field a size_t."""

    _fields_ = [(name, ctypes.c_size_t) for name in (*_MALLINFO2_FIELDS, "keepcost")]


@cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc's `mallinfo2` (2.33 and later), or None where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    function = getattr(ctypes.CDLL(name), "mallinfo2", None)
    if function is None:
        return None
    function.restype = _MallInfo2
    mallinfo2: Callable[[], _MallInfo2] = function
    return mallinfo2


def heap_bytes_in_use() -> int | None:
    """Bytes malloc has handed out and not had back (small blocks plus mmapped large ones, where tensors' storage
    goes): unlike RSS, a freed tensor lowers it at once. None off glibc."""
    function = _mallinfo2()
    if function is None:
        return None
    info = function()
    return int(info.uordblks + info.hblkhd)


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def device_allocated_bytes(device: torch.device) -> int | None:
    """Bytes torch's allocator holds for tensors on this GPU (None off a GPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return int(torch.cuda.memory_allocated(device))
