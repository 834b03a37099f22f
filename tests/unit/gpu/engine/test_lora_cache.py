"""The LoRA caches keep to their byte budgets and evict the least recently used entry."""

import time
from pathlib import Path

import torch

from gpu.engine.lora.cache import DiskLoraCache, MemoryLoraCache


def tensors(n_floats: int) -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(n_floats)}


def put(cache: MemoryLoraCache[dict[str, torch.Tensor]], key: str, n_floats: int) -> None:
    cache.put(key, tensors(n_floats), sha256=key * 64, size=4 * n_floats)


def test_memory_cache_evicts_least_recently_used_within_budget() -> None:
    cache: MemoryLoraCache[dict[str, torch.Tensor]] = MemoryLoraCache(budget_bytes=3 * 400)
    for key in "abc":
        put(cache, key, 100)
    assert cache.get("a") is not None  # a is now the most recent
    put(cache, "d", 100)
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None and cache.get("d") is not None
    assert cache.bytes_used == 3 * 400


def test_memory_cache_replacing_a_key_keeps_the_count_right() -> None:
    cache: MemoryLoraCache[dict[str, torch.Tensor]] = MemoryLoraCache(budget_bytes=1000)
    put(cache, "a", 100)
    put(cache, "a", 50)
    assert cache.bytes_used == 200 and len(cache) == 1


def test_memory_cache_skips_an_entry_larger_than_the_budget() -> None:
    cache: MemoryLoraCache[dict[str, torch.Tensor]] = MemoryLoraCache(budget_bytes=100)
    put(cache, "big", 1000)
    assert cache.get("big") is None and cache.bytes_used == 0


def test_disk_cache_round_trips_and_evicts_oldest(tmp_path: Path) -> None:
    cache = DiskLoraCache(tmp_path, budget_bytes=250)
    cache.put("a", b"a" * 100)
    time.sleep(0.01)
    cache.put("b", b"b" * 100)
    time.sleep(0.01)
    assert cache.get("a") == b"a" * 100  # touch a: b is now the oldest
    time.sleep(0.01)
    cache.put("c", b"c" * 100)
    assert cache.get("b") is None
    assert cache.get("a") == b"a" * 100 and cache.get("c") == b"c" * 100
    assert not list(tmp_path.glob("*.partial"))
