"""The engine: one SDXL pipeline, one LoRA slot, one request at a time, base weights bit-identical after each."""

import base64
import io
import logging
import threading
import time
from dataclasses import dataclass, field

import torch
from diffusers import StableDiffusionXLPipeline

from contracts.errors import WorkerErrorCode
from contracts.worker import ModelInfo, Timings, WorkerError, WorkerRequest, WorkerSuccess
from gpu.engine.budget import RequestBudget
from gpu.engine.decode import HalfVaeChoice, VaeDecoder, decodes_in_half
from gpu.engine.errors import WorkerFailure, request_canceled
from gpu.engine.lora.fuser import LoraFuser
from gpu.engine.lora.groups import group_update_bytes
from gpu.engine.lora.parse import LoraTensors
from gpu.engine.lora.plan import LoraPlan, pinned, plan_lora
from gpu.engine.lora.store import FetchedLora, LoraStore

log = logging.getLogger("gpu.engine.engine")

# `_detach` gives up (and retires the worker) after this many interrupted restores in a row that copied no layer.
RESTORE_STALLED_ATTEMPTS = 3


class _Stopped(Exception):
    """Raised from the step callback when the request's budget is spent or it was canceled."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


@dataclass
class _Clock:
    """Accumulates the timings of one request."""

    started: float = field(default_factory=time.perf_counter)
    timings: Timings = field(default_factory=Timings)

    def ms_since(self, mark: float) -> float:
        return round((time.perf_counter() - mark) * 1000, 3)


class SdxlLoraEngine:
    """Owns the pipeline and the LoRA lifecycle. `generate` never raises: it returns success or error."""

    def __init__(
        self,
        pipeline: StableDiffusionXLPipeline,
        store: LoraStore,
        base_model: str,
        default_timeout_seconds: float = 300.0,
        pristine_device: str = "same",
        vae_half: HalfVaeChoice = "auto",
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.base_model = base_model
        self.default_timeout_seconds = default_timeout_seconds
        self.fuser = LoraFuser(pipeline, pristine_device)
        self.decoder = VaeDecoder(pipeline, decodes_in_half(vae_half, pipeline.vae))
        self.requests_served = 0
        # Set when a restore left the base weights altered: this worker must not serve again.
        self.poisoned: str | None = None
        # One request at a time. A condition rather than a lock: a waiter wakes when the engine is free, when its
        # budget is spent, or when it is canceled (its budget's on_cancel notifies), whichever comes first.
        self._free = threading.Condition()
        self._busy = False

    @property
    def device(self) -> torch.device:
        return torch.device(self.pipeline.device)

    def to(self, device: torch.device | str) -> None:
        """Move the pipeline (Modal: CPU load before the snapshot, GPU after restore). The fuser's pristine copies
        and resolved plans are of the old tensors' place: they are dropped, and taken again on the device."""
        if self.fuser.pending_count:
            self._detach()
        self.pipeline.to(device)
        self.fuser.forget()

    def plan_lora(self, tensors: LoraTensors) -> LoraPlan:
        """Check the LoRA against this pipeline, its layers grouped as suits the device; on a GPU host, pin it for
        fast copies to the device."""
        plan = plan_lora(self.pipeline, tensors, group_update_bytes(self.device))
        return pinned(plan) if self.device.type == "cuda" else plan

    def generate(self, request: WorkerRequest, budget: RequestBudget | None = None) -> WorkerSuccess | WorkerError:
        """Serve one request. `budget` started when the request arrived (a new one now if not given); time spent
        waiting for the engine counts against it, and cancelling it stops the request at the next step."""
        budget = budget if budget is not None else RequestBudget(request.timeout_seconds)
        deadline = budget.deadline(self.default_timeout_seconds)
        try:
            if not self._acquire(budget, deadline):
                raise self._refusal(budget, deadline) or WorkerFailure(
                    WorkerErrorCode.TIMEOUT, "time budget spent while waiting for the engine"
                )
            # A line when a run starts and one when it made an image (the fault suite counts images made per
            # request: a redelivery or a restart must never make a second one).
            log.info("request %s: engine run started", request.request_id)
            try:
                outcome = self._generate(request, budget, deadline)
            finally:
                self._release()
            log.info("request %s: engine run made an image", request.request_id)
            return outcome
        except WorkerFailure as failure:
            return failure.to_error(request.request_id)
        except Exception as exc:  # a bug or an unforeseen failure: still an answer in the error shape
            log.exception("unexpected failure while serving a request")
            return WorkerFailure(
                WorkerErrorCode.GENERATION_FAILED, "unexpected worker failure", reason=type(exc).__name__
            ).to_error(request.request_id)
        finally:
            self.requests_served += 1

    def _acquire(self, budget: RequestBudget, deadline: float) -> bool:
        """Wait for the engine until it is free (True), or the budget is spent or canceled first (False)."""

        def wake() -> None:
            with self._free:
                self._free.notify_all()

        budget.on_cancel(wake)
        try:
            with self._free:
                while self._busy:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or budget.canceled:
                        return False
                    self._free.wait(remaining)
                self._busy = True
                return True
        finally:
            budget.remove_on_cancel(wake)

    def _release(self) -> None:
        with self._free:
            self._busy = False
            self._free.notify_all()

    def _refusal(self, budget: RequestBudget, deadline: float) -> WorkerFailure | None:
        """Why a request must not start (or go on) now: canceled, or its budget spent; None if it may."""
        if budget.canceled:
            return request_canceled(budget.cancel_reason or "canceled", waited_seconds=round(budget.elapsed(), 3))
        if time.monotonic() >= deadline:
            return WorkerFailure(
                WorkerErrorCode.TIMEOUT,
                "time budget spent before the request started",
                timeout_seconds=budget.seconds(self.default_timeout_seconds),
                waited_seconds=round(budget.elapsed(), 3),
            )
        return None

    def _generate(self, request: WorkerRequest, budget: RequestBudget, deadline: float) -> WorkerSuccess:
        if self.fuser.pending_count:
            # An interruption (a BaseException at any line) escaped before the last request's restore ran to its
            # end: finish it now, before anything runs on these weights.
            self._detach()
        if self.poisoned:
            raise WorkerFailure(
                WorkerErrorCode.MODEL_LOAD_FAILED, "worker retired: base weights may be altered", reason=self.poisoned
            )
        # Checked once the engine is ours: a request whose budget ran out while it queued never runs.
        refusal = self._refusal(budget, deadline)
        if refusal is not None:
            raise refusal
        clock = _Clock()
        fetched: FetchedLora | None = None
        if request.lora_url:
            mark = time.perf_counter()
            fetched = self.store.get(request.lora_url, request.lora_sha256, self.plan_lora, deadline)
            clock.timings.download_ms = round(fetched.download_ms, 3)
            clock.timings.lora_source = fetched.source
            # load_ms counts reading, checking and planning the file (not downloading it), then fusing it.
            clock.timings.load_ms = round(max(clock.ms_since(mark) - fetched.download_ms, 0.0), 3)
        try:
            if fetched is not None:
                mark = time.perf_counter()
                self._attach(fetched.plan, request.lora_scale)
                clock.timings.load_ms = round(clock.timings.load_ms + clock.ms_since(mark), 3)
            png = self._run_pipeline(request, budget, deadline, clock)
        finally:
            # Whatever ended the request, BaseException included (Modal's InputCancellation): see `_detach`.
            if fetched is not None:
                mark = time.perf_counter()
                self._detach()
                clock.timings.restore_ms = clock.ms_since(mark)
        clock.timings.total_ms = clock.ms_since(clock.started)
        return WorkerSuccess(
            image_base64=base64.b64encode(png).decode("ascii"),
            generation_time_seconds=round(time.perf_counter() - clock.started, 4),
            model_info=ModelInfo(
                base_model=self.base_model,
                lora_applied=fetched is not None,
                lora_scale=request.lora_scale if fetched is not None else 0.0,
            ),
            request_id=request.request_id,
            lora_sha256=fetched.sha256 if fetched else None,
            seed=request.seed,
            timings=clock.timings,
        )

    def _attach(self, plan: LoraPlan, scale: float) -> None:
        try:
            self.fuser.fuse(plan, scale)
        except torch.cuda.OutOfMemoryError:
            raise WorkerFailure(WorkerErrorCode.CUDA_OOM, "GPU out of memory while applying the LoRA") from None

    def _detach(self) -> None:
        """Restore every layer the LoRA touched from its pristine copy: the base weights are exact again.

        A BaseException raised in the middle (an interruption: Modal's InputCancellation, a KeyboardInterrupt)
        does not skip the rest: the restore resumes where it stopped, then the first interruption is raised
        again. One that keeps coming without letting a layer be restored retires the worker instead.
        """
        interrupted: BaseException | None = None
        stalled = 0
        altered: list[str] | None = None
        while altered is None:
            pending = self.fuser.pending_count
            try:
                altered = self.fuser.restore()
            except Exception as exc:  # should never happen; if it does, this worker must not serve again
                altered = [f"restore failed: {type(exc).__name__}"]
            except BaseException as exc:
                interrupted = interrupted or exc
                stalled = stalled + 1 if self.fuser.pending_count >= pending else 0
                if stalled >= RESTORE_STALLED_ATTEMPTS:
                    altered = [f"restore interrupted {stalled} times without progress: {type(exc).__name__}"]
        if altered:
            self.poisoned = f"{len(altered)} layers differ from the base after restore (first: {altered[0]})"
        if interrupted is not None:
            raise interrupted

    def _run_pipeline(self, request: WorkerRequest, budget: RequestBudget, deadline: float, clock: _Clock) -> bytes:
        # The download or the fusing may have used the rest of the budget, or a cancel came meanwhile.
        refusal = self._refusal(budget, deadline)
        if refusal is not None:
            raise refusal
        last_step_end = [time.perf_counter()]

        def on_step_end(
            pipe: StableDiffusionXLPipeline, step: int, timestep: int, kwargs: dict[str, object]
        ) -> dict[str, object]:
            # The GPU is freed here, between two steps: the caller's `finally` restores the base weights.
            last_step_end[0] = time.perf_counter()
            if budget.canceled or time.monotonic() > deadline:
                raise _Stopped(step + 1)
            return kwargs

        # A CPU generator gives the same noise for the same seed on any device.
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        mark = time.perf_counter()
        try:
            with torch.inference_mode():
                result = self.pipeline(
                    prompt=request.prompt,
                    # SDXL uses zeros for an absent negative prompt; "" would encode the empty string instead.
                    negative_prompt=request.negative_prompt or None,
                    width=request.width,
                    height=request.height,
                    num_inference_steps=request.steps,
                    guidance_scale=request.cfg,
                    generator=generator,
                    callback_on_step_end=on_step_end,
                    output_type="latent",
                )
                image = self.decoder.to_image(result.images)
        except _Stopped as stopped:
            progress = {"steps_done": stopped.step, "steps": request.steps}
            if budget.canceled:
                raise request_canceled(budget.cancel_reason or "canceled", **progress) from None
            raise WorkerFailure(
                WorkerErrorCode.TIMEOUT,
                "generation ran past the request's time budget",
                timeout_seconds=budget.seconds(self.default_timeout_seconds),
                **progress,
            ) from None
        except torch.cuda.OutOfMemoryError:
            raise WorkerFailure(
                WorkerErrorCode.CUDA_OOM, "GPU out of memory", width=request.width, height=request.height
            ) from None
        except Exception as exc:  # anything else inside diffusers/torch is a generation failure
            raise WorkerFailure(
                WorkerErrorCode.GENERATION_FAILED,
                "generation failed inside the pipeline",
                reason=f"{type(exc).__name__}: {str(exc)[:300]}",
            ) from None
        clock.timings.denoise_ms = round((last_step_end[0] - mark) * 1000, 3)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        clock.timings.decode_encode_ms = clock.ms_since(last_step_end[0])
        return buffer.getvalue()
