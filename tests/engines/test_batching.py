"""Batching across sessions: the batch-dynamic graph and the BatchScheduler, on the real
generator (onnxruntime CPU) with real faces.

Speed is not asserted (benchmarks measure it); the latency *contract* is, from the
timestamps the scheduler records: a request never waits past max_wait plus the one engine
call already running.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
import onnx
import pytest

from engines import Engine, create_engine
from engines.batching import BatchScheduler
from engines.export import export_generator
from engines.onnxruntime_runner import OnnxRuntimeEngine
from models.errors import EngineError
from models.source import generator_config
from tests.engines.inputs import Inputs, generator_inputs

SIZE = 256
MAX_BATCH = 8
# Thread wake-up latency on a shared, loaded 2-core machine: generous, and unrelated to the
# engine's speed, so a scheduler that waited for a full batch (forever) or once per extra
# request would still fail.
SLACK_S = 0.25


@pytest.fixture(scope="module")
def frames() -> list[Inputs]:
    """Six generator inputs: two portraits (two sessions) x three driving frames.

    Each portrait's constant tensors are the same array objects in all its frames, as in a
    real session.
    """
    return generator_inputs(SIZE, frames=3, step=40)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    # One thread: no onnxruntime pool spinning against the scheduler's threads on 2 cores.
    with create_engine("onnxruntime", SIZE, 1, max_batch=MAX_BATCH) as e:
        yield e


@pytest.fixture(scope="module")
def singles(engine: Engine, frames: list[Inputs]) -> list[np.ndarray]:
    """Each frame run alone: what batching must reproduce."""
    return [engine.infer(f)["frame"] for f in frames]


def stack(frames: list[Inputs]) -> Inputs:
    return {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}


def assert_same_frame(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to a rare rounding flip of one grey level (kernels may vectorise a batch
    differently; on the machines tried the results were bit-identical)."""
    assert a.shape == b.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1
    assert diff.mean() < 0.01


def test_batch_graph_has_a_symbolic_batch_axis() -> None:
    path = export_generator(generator_config(SIZE), dynamic_batch=True)
    graph = onnx.load(str(path)).graph
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch", value.name
        assert all(d.dim_value > 0 for d in dims[1:]), value.name


def test_batch_of_four_matches_four_single_runs(
    engine: Engine, frames: list[Inputs], singles: list[np.ndarray]
) -> None:
    picked = [0, 4, 2, 5]  # both portraits, mixed order
    out = engine.infer(stack([frames[i] for i in picked]))["frame"]
    assert out.shape == (4, SIZE, SIZE, 3)
    for row, i in enumerate(picked):
        assert_same_frame(out[row : row + 1], singles[i])


def test_batch_graph_matches_torch(frames: list[Inputs], singles: list[np.ndarray]) -> None:
    with create_engine("torch", SIZE) as reference:
        expected = reference.infer(stack(frames[:2]))["frame"].astype(np.int16)
    diff = np.abs(expected - np.concatenate(singles[:2]).astype(np.int16))
    assert diff.mean() < 0.05  # the same bounds as test_parity's batch-1 graph
    assert np.percentile(diff, 99.9) <= 2


def test_scheduler_is_an_engine_and_batches(
    engine: Engine, frames: list[Inputs], singles: list[np.ndarray]
) -> None:
    with BatchScheduler(engine, MAX_BATCH, max_wait_ms=200, close_engine=False) as scheduler:
        assert isinstance(scheduler, Engine)
        futures = [scheduler.submit(f) for f in frames]  # all pending within the 200 ms
        results = [f.result(timeout=30)["frame"] for f in futures]
        records = list(scheduler.records)
    for got, want in zip(results, singles, strict=True):
        assert_same_frame(got, want)
    assert [r.rows for r in records] == [len(frames)]  # one call for all six


def test_concurrent_sessions_get_their_own_frames_within_the_wait_bound(
    engine: Engine, frames: list[Inputs], singles: list[np.ndarray]
) -> None:
    max_wait_ms = 5.0
    sessions, rounds = 4, 4
    got: dict[tuple[int, int], np.ndarray] = {}
    with BatchScheduler(engine, MAX_BATCH, max_wait_ms, close_engine=False) as scheduler:
        start = threading.Barrier(sessions)

        def session(k: int) -> None:
            start.wait()
            for r in range(rounds):
                i = (k + r) % len(frames)
                got[(k, r)] = scheduler.infer(frames[i])["frame"]

        threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        records = list(scheduler.records)
    for (k, r), frame in got.items():
        assert_same_frame(frame, singles[(k + r) % len(frames)])
    assert len(got) == sessions * rounds
    assert sum(r.rows for r in records) == sessions * rounds
    assert not any(r.failed for r in records)
    # The contract: with at most max_batch frames pending, a batch starts by the deadline of
    # its oldest request or as soon as the worker is free of the previous call, whichever is
    # later; so no request waits longer than max_wait plus one engine call.
    free_at = 0.0
    for record in records:
        deadline = min(record.submitted) + max_wait_ms / 1000
        assert record.started <= max(deadline, free_at) + SLACK_S
        free_at = record.finished
    longest_call = max(r.finished - r.started for r in records)
    assert max(r.max_wait_s for r in records) <= max_wait_ms / 1000 + longest_call + SLACK_S


def test_a_lone_request_waits_for_company_only_max_wait(
    engine: Engine, frames: list[Inputs], singles: list[np.ndarray]
) -> None:
    max_wait_ms = 40.0
    with BatchScheduler(engine, MAX_BATCH, max_wait_ms, close_engine=False) as scheduler:
        frame = scheduler.infer(frames[1])["frame"]
        (record,) = scheduler.records
    assert_same_frame(frame, singles[1])
    assert record.rows == 1
    assert max_wait_ms / 1000 <= record.max_wait_s <= max_wait_ms / 1000 + SLACK_S


def test_a_failing_batch_fails_only_its_own_requests(
    engine: Engine, frames: list[Inputs], singles: list[np.ndarray]
) -> None:
    bad = {**frames[3], "control": frames[3]["control"].astype(np.float64)}  # wrong dtype
    with BatchScheduler(engine, MAX_BATCH, max_wait_ms=200, close_engine=False) as scheduler:
        futures = [scheduler.submit(f) for f in (frames[0], bad, frames[2], bad)]
        outcomes = [f.exception(timeout=30) for f in futures]
        records = list(scheduler.records)
        after = scheduler.infer(frames[0])["frame"]  # the scheduler still works
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], EngineError)
    assert outcomes[3] is outcomes[1]  # stacked together, failed together
    assert_same_frame(futures[0].result()["frame"], singles[0])
    assert_same_frame(futures[2].result()["frame"], singles[2])
    assert sorted((r.rows, r.failed) for r in records) == [(2, False), (2, True)]
    assert_same_frame(after, singles[0])


def test_close_fails_what_never_started_and_stops_the_worker(frames: list[Inputs]) -> None:
    path = export_generator(generator_config(SIZE), dynamic_batch=True)
    inner = OnnxRuntimeEngine(path)
    scheduler = BatchScheduler(inner, MAX_BATCH, max_wait_ms=60_000)  # would wait a minute
    pending: list[Future[Inputs]] = [scheduler.submit(f) for f in frames[:2]]
    scheduler.close(timeout=10)
    for future in pending:
        with pytest.raises(EngineError, match="closed"):
            future.result(timeout=1)
    assert not scheduler._worker.is_alive()
    with pytest.raises(EngineError, match="closed"):
        scheduler.submit(frames[0])
    scheduler.close()  # idempotent
    assert not hasattr(inner, "_session")  # close_engine=True closed the engine too


def test_sources_stay_resident_across_batches(
    frames: list[Inputs], singles: list[np.ndarray]
) -> None:
    """Two sessions meeting in a batch again reuse their stacked source, so a runner that
    keeps inputs on the device by identity uploads it once (I/O binding on the CPU here;
    the same path runs on CUDA)."""
    path = export_generator(generator_config(SIZE), dynamic_batch=True)
    inner = OnnxRuntimeEngine(path, io_device="cpu")
    with BatchScheduler(inner, MAX_BATCH, max_wait_ms=200) as scheduler:
        for r in range(3):
            pair = [frames[r], frames[3 + r]]  # the same two portraits, new driving frames
            results = [f.result(timeout=30) for f in [scheduler.submit(p) for p in pair]]
            assert_same_frame(results[0]["frame"], singles[r])
            assert_same_frame(results[1]["frame"], singles[3 + r])
        assert [rec.rows for rec in scheduler.records] == [2, 2, 2]
    constant = 4  # source_image, head_mask, source_mouth, mouth_colors
    assert inner._resident.hits == constant * 2  # every batch after the first
