"""LRU caches for LoRAs with byte budgets: parsed tensors in memory, raw files on disk (a Volume on Modal)."""

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Generic, TypeVar

Value = TypeVar("Value")


class MemoryLoraCache(Generic[Value]):
    """Prepared LoRAs kept in host memory, least recently used evicted first, within a byte budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        # key -> (value, sha256 of the file, bytes)
        self._entries: OrderedDict[str, tuple[Value, str, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[Value, str] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0], entry[1]

    def put(self, key: str, value: Value, sha256: str, size: int) -> None:
        if size > self.budget_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._entries[key] = (value, sha256, size)
            self._bytes += size
            while self._bytes > self.budget_bytes:
                _, (_, _, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


class DiskLoraCache:
    """Raw LoRA files under a directory, named by a hash of their identity; oldest access evicted first."""

    def __init__(self, directory: Path, budget_bytes: int) -> None:
        self.directory = directory
        self.budget_bytes = budget_bytes
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest() + ".safetensors")

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        os.utime(path)  # the modification time is our access clock, as atime is often off
        return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.budget_bytes:
            return
        path = self._path(key)
        # Write then rename: a reader (another container on the same Volume) never sees half a file.
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_bytes(data)
        partial.replace(path)
        self._evict()

    def discard(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _evict(self) -> None:
        files = []
        for path in self.directory.glob("*.safetensors"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.budget_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
