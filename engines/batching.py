"""Batching across sessions: one generator call for the frames all sessions have pending.

A GPU runs one batch of 16 frames in little more time than one frame, so a server with many
sessions should not call the engine once per frame.  BatchScheduler sits in front of one
batch-capable engine (export_generator(dynamic_batch=True), or a TensorRT engine with a batch
profile): sessions submit their frame's inputs, a worker thread gathers what is pending and
runs a single ``engine.infer`` on the inputs stacked along axis 0, then hands each session its
rows of the result.

The latency contract: a request waits for company at most ``max_wait_ms`` after it arrived,
measured from its own submission, and never for a full batch.  If the engine is busy when
that bound runs out, the request goes in the very next call.  So, as long as at most
``max_batch`` frames are pending at once, batching adds at most ``max_wait_ms`` plus the one
engine call already running.  Each batch records its timestamps (BatchRecord) so that
contract can be checked from what actually happened, not from wall-clock expectations.

The scheduler is itself an Engine: a session calls ``infer`` as on any engine and blocks
until its rows are ready, or uses ``submit`` for a Future.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from engines.base import Engine, EngineBase
from models.errors import EngineError, ReenactError

log = logging.getLogger(__name__)

Inputs = dict[str, np.ndarray]
# Keys, dtypes and per-row shapes: only requests with equal signatures can be stacked.
Signature = tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class BatchRecord:
    """What happened to one batch; times are time.monotonic() seconds."""

    rows: int  # total batch size (requests may carry several rows)
    requests: int
    submitted: tuple[float, ...]  # each request's submission time
    started: float  # engine.infer called
    finished: float  # engine.infer returned (or raised)
    failed: bool

    @property
    def max_wait_s(self) -> float:
        """The longest any of its requests waited before the engine started on it."""
        return self.started - min(self.submitted)


@dataclass(eq=False)  # compared by identity: their inputs are arrays
class _Request:
    inputs: Inputs
    rows: int
    signature: Signature
    future: Future[Inputs]
    submitted: float = field(default_factory=time.monotonic)


def _signature(inputs: Inputs) -> Signature:
    return tuple(sorted((k, v.dtype.str, tuple(v.shape[1:])) for k, v in inputs.items()))


class _Stacker:
    """np.concatenate with memory: the same parts in the same order give the same array.

    A session's source embedding is the same array object every frame; when the same
    sessions meet in a batch again, their stacked source is reused rather than rebuilt, so
    a runner that keeps inputs resident on the GPU by identity (ResidentInputs) skips the
    upload too.  Parts are held by reference, so their ids cannot be recycled meanwhile.
    """

    def __init__(self, capacity: int = 4) -> None:
        self._capacity = capacity
        self._cache: dict[str, collections.OrderedDict[tuple[int, ...], tuple]] = {}

    def stack(self, name: str, parts: list[np.ndarray]) -> np.ndarray:
        if len(parts) == 1:
            return parts[0]
        key = tuple(id(p) for p in parts)
        cache = self._cache.setdefault(name, collections.OrderedDict())
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit[1]
        stacked = np.concatenate(parts, axis=0)
        cache[key] = (parts, stacked)
        if len(cache) > self._capacity:
            cache.popitem(last=False)
        return stacked


class BatchScheduler(EngineBase):
    """Gathers concurrent requests into batched calls of one engine, on one worker thread.

    ``max_batch``: rows per engine call (the engine's own limit, e.g. its TensorRT profile).
    ``max_wait_ms``: how long the oldest pending request may wait for others; 0 batches only
    what is already pending.  ``close_engine``: close the wrapped engine on ``close``.
    Requests whose inputs differ in keys, dtypes or per-row shapes are never stacked
    together (each goes in a batch of its own kind), so one session's malformed frame can
    fail only its own batch.
    """

    name = "batched"

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 16,
        max_wait_ms: float = 3.0,
        *,
        close_engine: bool = True,
        history: int = 1024,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, not {max_wait_ms}")
        self.engine = engine
        self.name = f"batched-{engine.name}"
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.records: collections.deque[BatchRecord] = collections.deque(maxlen=history)
        self._close_engine = close_engine
        self._pending: collections.deque[_Request] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False  # no more requests taken (close, or the worker died)
        self._close_called = False
        self._stacker = _Stacker()
        self._worker = threading.Thread(target=self._run, name="batch-scheduler", daemon=True)
        self._worker.start()

    # -- the Engine side -------------------------------------------------------------------

    def submit(self, inputs: Inputs) -> Future[Inputs]:
        """Queue one request (rows along axis 0, usually 1); its Future gets its own rows."""
        rows = {int(v.shape[0]) for v in inputs.values()} if inputs else {0}
        if len(rows) != 1 or 0 in rows:
            raise EngineError(f"inputs need one common, non-zero batch axis, got {sorted(rows)}")
        request = _Request(inputs, rows.pop(), _signature(inputs), Future())
        with self._wake:
            if self._closed:
                raise EngineError("batch scheduler is closed")
            self._pending.append(request)
            self._wake.notify()
        return request.future

    def infer(self, inputs: Inputs) -> Inputs:
        return self.submit(inputs).result()

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking requests, finish the batch in flight, fail what never started.

        Bounded: waits at most ``timeout`` seconds for the worker (a stuck engine call
        cannot hold shutdown forever; the thread is a daemon).
        """
        with self._wake:
            if self._close_called:
                return
            self._close_called = True
        self._shut("batch scheduler closed")
        self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("batch scheduler: engine call still running after %.0f s", timeout)
        elif self._close_engine:
            self.engine.close()

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._gather()) is not None:
                self._execute(batch)
        except BaseException:  # a bug here must not leave callers waiting forever
            log.exception("batch scheduler worker died")
            self._shut("batch scheduler worker died")
            raise

    def _shut(self, why: str) -> None:
        """Take no more requests; fail those that never started with ``why``."""
        with self._wake:
            self._closed = True
            abandoned = list(self._pending)
            self._pending.clear()
            self._wake.notify_all()
        for request in abandoned:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(EngineError(why))

    def _gather(self) -> list[_Request] | None:
        """Wait for a request, then for company until it has waited max_wait or rows fill up."""
        with self._wake:
            while not self._pending and not self._closed:
                self._wake.wait()
            if self._closed:
                return None
            deadline = self._pending[0].submitted + self.max_wait_s
            while not self._closed:
                batch, full = self._select()
                remaining = deadline - time.monotonic()
                if full or remaining <= 0:
                    break
                self._wake.wait(remaining)
            if self._closed:
                return None
            for request in batch:
                self._pending.remove(request)
            return batch

    def _select(self) -> tuple[list[_Request], bool]:
        """The oldest request and those after it that stack with it, up to max_batch rows."""
        first = self._pending[0]
        batch, rows = [first], first.rows
        for request in list(self._pending)[1:]:
            if request.signature != first.signature:
                continue
            if rows + request.rows > self.max_batch:
                return batch, True
            batch.append(request)
            rows += request.rows
        return batch, rows >= self.max_batch

    def _execute(self, batch: list[_Request]) -> None:
        # A caller may have cancelled its Future while it waited; it gets no rows.
        batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not batch:
            return
        started = time.monotonic()
        results: list[Inputs] = []
        error: BaseException | None = None
        try:
            stacked = {
                name: self._stacker.stack(name, [r.inputs[name] for r in batch])
                for name in batch[0].inputs
            }
            results = self._split(batch, self.engine.infer(stacked))
        except Exception as exc:  # whatever the engine raised belongs to these requests only
            error = exc if isinstance(exc, ReenactError) else EngineError(f"batch failed: {exc}")
            if error is not exc:
                error.__cause__ = exc
        self.records.append(
            BatchRecord(
                rows=sum(r.rows for r in batch),
                requests=len(batch),
                submitted=tuple(r.submitted for r in batch),
                started=started,
                finished=time.monotonic(),
                failed=error is not None,
            )
        )
        for i, request in enumerate(batch):
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(results[i])

    @staticmethod
    def _split(batch: list[_Request], outputs: Inputs) -> list[Inputs]:
        rows = sum(r.rows for r in batch)
        for name, value in outputs.items():
            if value.shape[0] != rows:
                raise EngineError(f"output {name} has {value.shape[0]} rows for {rows} inputs")
        results, offset = [], 0
        for request in batch:
            end = offset + request.rows
            results.append({name: value[offset:end] for name, value in outputs.items()})
            offset = end
        return results
