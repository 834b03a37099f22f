"""Get a LoRA ready for a request: from memory, from disk, or downloaded, verified, parsed and planned."""

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from contracts.errors import LORA_SHA256_MISMATCH_REASON
from contracts.worker import LoraSource
from gpu.engine.errors import lora_download_failed
from gpu.engine.lora.cache import DiskLoraCache, MemoryLoraCache
from gpu.engine.lora.download import DownloadPolicy, check_url, download, url_identity
from gpu.engine.lora.parse import LoraTensors, parse_lora
from gpu.engine.lora.plan import LoraPlan

# Checks parsed tensors against the loaded model and plans them; raises LORA_LOAD_FAILED when they do not fit.
Planner = Callable[[LoraTensors], LoraPlan]


@dataclass(frozen=True)
class FetchedLora:
    """A LoRA ready to fuse, with where it came from and what fetching it cost."""

    plan: LoraPlan
    sha256: str
    source: LoraSource
    download_ms: float


class LoraStore:
    """Caches by object identity: the sha256 when the caller gives one, else the URL without its query."""

    def __init__(
        self,
        policy: DownloadPolicy,
        memory: MemoryLoraCache[LoraPlan],
        disk: DiskLoraCache | None = None,
    ) -> None:
        self.policy = policy
        self.memory = memory
        self.disk = disk

    @staticmethod
    def cache_key(url: str, sha256: str | None) -> str:
        return f"sha256:{sha256}" if sha256 else url_identity(url)

    def get(self, url: str, sha256: str | None, plan: Planner, deadline: float | None = None) -> FetchedLora:
        # The policy applies even on a cache hit: a URL we would refuse to fetch is refused, full stop.
        check_url(url, self.policy)
        key = self.cache_key(url, sha256)
        cached = self.memory.get(key)
        if cached is not None:
            return FetchedLora(cached[0], cached[1], "memory_cache", 0.0)

        source: LoraSource = "disk_cache"
        download_ms = 0.0
        data = self.disk.get(key) if self.disk else None
        if data is not None and sha256 and hashlib.sha256(data).hexdigest() != sha256:
            # A corrupted cache file is dropped and fetched again, never trusted.
            assert self.disk is not None
            self.disk.discard(key)
            data = None
        if data is None:
            source = "download"
            started = time.perf_counter()
            data = download(url, self.policy, deadline)
            download_ms = (time.perf_counter() - started) * 1000
        digest = hashlib.sha256(data).hexdigest()
        if sha256 and digest != sha256:
            # `reason` tells the gateway not to retry: the same object would arrive with the same bytes.
            raise lora_download_failed(
                "LoRA sha256 does not match lora_sha256",
                expected=sha256,
                actual=digest,
                reason=LORA_SHA256_MISMATCH_REASON,
            )
        prepared = plan(parse_lora(data))
        # Only files that parsed and fit the model are cached: a bad file is refused again next time.
        if self.disk is not None and source == "download":
            self.disk.put(key, data)
        self.memory.put(key, prepared, digest, prepared.nbytes)
        return FetchedLora(prepared, digest, source, download_ms)
