"""Following generations (event streams and `Prefer: wait`): caps on how many one replica holds open, per generation,
per owner and in all (a stream past them is a 429 with Retry-After), and the one read per change they all share."""

from __future__ import annotations

import logging
import resource
import uuid
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.common.http.errors import NotFoundError, TooManyRequestsError
from services.common.observability.metrics import ServiceMetrics
from services.content.changes import ChangeHub
from services.content.decisions import StatusStep
from services.content.reads import GenerationView
from services.content.settings import StreamSettings
from services.content.shared_reads import SharedReads
from services.content.watching import EventData, ReadView

log = logging.getLogger(__name__)

TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
TOO_MANY_STREAMS_FOR_GENERATION = "TOO_MANY_STREAMS_FOR_GENERATION"
TOO_MANY_STREAMS_FOR_OWNER = "TOO_MANY_STREAMS_FOR_OWNER"
# A slot frees when a stream ends: its generation's end, a client leaving, or the stream's lifetime.
STREAM_RETRY_AFTER_SECONDS = 10
# File descriptors left for everything but followers' sockets: pooled database connections, the broker, storage
# calls, the other requests, logs. A replica follows at most its soft RLIMIT_NOFILE less these, for both kinds.
RESERVED_FILE_DESCRIPTORS = 256
UNLIMITED_FILES = 1 << 20

OPEN_METRIC = "vixen_content_followers_open"
REFUSED_METRIC = "vixen_content_followers_refused"
READS_METRIC = "vixen_content_follower_reads"


@dataclass(frozen=True)
class StreamCaps:
    """CONTENT_MAX_STREAMS_PER_GENERATION, CONTENT_MAX_STREAMS_PER_OWNER and CONTENT_MAX_STREAMS (per replica)."""

    per_generation: int
    per_owner: int
    per_replica: int


def cap_refusal(
    caps: StreamCaps, *, replica: int | None = None, generation: int | None = None, owner: int | None = None
) -> str | None:
    """The reason code of the cap one more follower would exceed, given how many are open now (None: not counted
    here), or None when it fits; the replica's cap is named first, then the generation's, then the owner's."""
    if replica is not None and replica >= caps.per_replica:
        return TOO_MANY_STREAMS
    if generation is not None and generation >= caps.per_generation:
        return TOO_MANY_STREAMS_FOR_GENERATION
    if owner is not None and owner >= caps.per_owner:
        return TOO_MANY_STREAMS_FOR_OWNER
    return None


def replica_cap(configured: int, open_files: int, kinds: int = 2) -> int:
    """The per-replica cap a process can keep: what is configured, within its file descriptors (less the reserve),
    shared by `kinds` capped kinds of follower (streams and waits), at least 1."""
    return max(1, min(configured, (open_files - RESERVED_FILE_DESCRIPTORS) // kinds))


_REFUSALS = {
    TOO_MANY_STREAMS: "this replica follows as many generations as it can",
    TOO_MANY_STREAMS_FOR_GENERATION: "too many open {kind} on this generation",
    TOO_MANY_STREAMS_FOR_OWNER: "too many open {kind} of this owner",
}


class StreamLimitError(TooManyRequestsError):
    """Past a cap on open followers (429): `reason_code` names which one."""

    def __init__(self, kind: str, reason_code: str) -> None:
        super().__init__(
            f"{_REFUSALS[reason_code].format(kind=kind)}; try again later",
            reason_code=reason_code,
            retry_after_seconds=STREAM_RETRY_AFTER_SECONDS,
        )


class Followers:
    """The open followers of one kind ("event streams", "waits") in this process, counted per generation, per owner
    and in all. Everything runs on the event loop's thread: a check and its count are one step."""

    def __init__(self, kind: str, caps: StreamCaps, metrics: ServiceMetrics | None = None, *, label: str) -> None:
        self.kind = kind
        self.label = label  # the metrics' `kind`
        self.caps = caps
        self._metrics = metrics
        self.open = 0
        self.by_generation: Counter[str] = Counter()
        self.by_owner: Counter[str] = Counter()

    def hold(self, *, generation: str | None = None, owner: str | None = None) -> Hold:
        """Count one more follower (of `generation`, of `owner`, where already known); StreamLimitError past a cap."""
        self._check(replica=self.open)
        hold = Hold(self)
        self.open += 1
        try:
            hold.claim(generation=generation, owner=owner)
        except StreamLimitError:
            hold.release()
            raise
        return hold

    def _check(self, *, replica: int | None = None, generation: int | None = None, owner: int | None = None) -> None:
        reason = cap_refusal(self.caps, replica=replica, generation=generation, owner=owner)
        if reason is not None:
            if self._metrics is not None:
                self._metrics.add(REFUSED_METRIC, 1, "followers refused past a cap", kind=self.label, reason=reason)
            raise StreamLimitError(self.kind, reason)

    def _forget(self, counts: Counter[str], key: str) -> None:
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]


class Hold:
    """One follower's place in the counts, claimed a part at a time (the owner of a signed link is known only after
    the first read); `release` gives back all of it, once."""

    def __init__(self, followers: Followers) -> None:
        self._followers = followers
        self._generation: str | None = None
        self._owner: str | None = None
        self._released = False

    def claim(self, *, generation: str | None = None, owner: str | None = None) -> None:
        """Count this follower for `generation` and `owner` too, unless it already is; StreamLimitError past a cap."""
        followers = self._followers
        if generation is not None and self._generation is None:
            followers._check(generation=followers.by_generation[generation])
            followers.by_generation[generation] += 1
            self._generation = generation
        if owner is not None and self._owner is None:
            followers._check(owner=followers.by_owner[owner])
            followers.by_owner[owner] += 1
            self._owner = owner

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        followers = self._followers
        followers.open -= 1
        if self._generation is not None:
            followers._forget(followers.by_generation, self._generation)
        if self._owner is not None:
            followers._forget(followers.by_owner, self._owner)


class GenerationWatching:
    """What the streams and waits of this process share: the change hub, one read per change of a generation, the
    caps on each kind, and the streams' heartbeat and lifetime."""

    def __init__(
        self,
        hub: ChangeHub,
        load: Callable[[uuid.UUID], Awaitable[GenerationView]],
        caps: StreamCaps,
        *,
        heartbeat_seconds: float,
        max_stream_seconds: float,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.hub = hub
        self.heartbeat_seconds = heartbeat_seconds
        self.max_stream_seconds = max_stream_seconds
        self._load = load
        self._metrics = metrics
        # A kept read serves the waiters of its version for at most a heartbeat: the streams' periodic reads then
        # cost one read per generation and heartbeat, not one per stream.
        self.reads: SharedReads[GenerationView] = SharedReads(hub, self._read, max_age=heartbeat_seconds)
        self.streams = Followers("event streams", caps, metrics, label="stream")
        self.waits = Followers("waits", caps, metrics, label="wait")
        # The streams of a generation share its view (one read per change), so they share its events' data too:
        # rendered once per view and step, forgotten with the view.
        self._rendered: weakref.WeakKeyDictionary[GenerationView, dict[int, str]] = weakref.WeakKeyDictionary()
        if metrics is not None:
            metrics.gauge(
                OPEN_METRIC,
                lambda: [(self.streams.open, {"kind": "stream"}), (self.waits.open, {"kind": "wait"})],
                "open event streams and Prefer: wait requests",
            )

    async def _read(self, key: str) -> GenerationView:
        if self._metrics is not None:
            self._metrics.add(READS_METRIC, 1, "generation reads for streams and waits (one per change, shared)")
        return await self._load(uuid.UUID(key))

    def event_data(self, render: EventData) -> EventData:
        """`render`, once per shared view and status step for all the streams that send it."""

        def rendered(view: GenerationView, step: StatusStep) -> str:
            per_step = self._rendered.get(view)
            if per_step is None:
                per_step = self._rendered[view] = {}
            text = per_step.get(step.step)
            if text is None:
                text = per_step[step.step] = render(view, step)
            return text

        return rendered

    def reader(self, key: str, owner_id: str | None, hold: Hold) -> ReadView:
        """The shared read of generation `key` as one follower sees it: 404 unless it is `owner_id`'s (None: a signed
        link proved the right to it), and counted for its generation and owner once the owner is known (a stranger
        gets 404, never a count of someone else's generation)."""

        async def read() -> GenerationView:
            view = await self.reads.read(key)
            owner = view.generation.owner_id
            if owner_id is not None and owner != owner_id:
                raise NotFoundError("unknown generation")
            hold.claim(generation=key, owner=owner)
            return view

        return read


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (each follower holds a socket); the soft
    limit in force after (a very large number when unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:  # an unlimited hard limit is more than the kernel takes
            log.warning("could not raise the open-file limit above %d: %s", soft, error)
    return UNLIMITED_FILES if soft == resource.RLIM_INFINITY else soft


def watching_from_settings(
    settings: StreamSettings,
    hub: ChangeHub,
    load: Callable[[uuid.UUID], Awaitable[GenerationView]],
    metrics: ServiceMetrics | None = None,
) -> GenerationWatching:
    """The process's GenerationWatching from the settings, its per-replica cap kept within its open-file limit."""
    open_files = raise_open_file_limit()
    per_replica = replica_cap(settings.max_streams, open_files)
    if per_replica < settings.max_streams:
        log.warning(
            "CONTENT_MAX_STREAMS %d is more than %d open files allow: following at most %d of each kind",
            settings.max_streams,
            open_files,
            per_replica,
        )
    caps = StreamCaps(
        per_generation=settings.max_streams_per_generation,
        per_owner=settings.max_streams_per_owner,
        per_replica=per_replica,
    )
    return GenerationWatching(
        hub,
        load,
        caps,
        heartbeat_seconds=settings.sse_heartbeat_seconds,
        max_stream_seconds=settings.stream_max_seconds,
        metrics=metrics,
    )
