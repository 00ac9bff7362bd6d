"""Merging several processes' Prometheus expositions into one (the cluster API's /metrics)."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from service.metrics import Metrics, merge


def parsed(text: bytes) -> dict[str, list[Sample]]:
    """Family name -> its samples, checking that no family is written twice."""
    lines = text.decode().splitlines()
    types = Counter(line.split()[2] for line in lines if line.startswith("# TYPE "))
    assert [name for name, n in types.items() if n > 1] == []
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called ``name`` with exactly these labels."""
    [match] = [s.value for s in samples if s.name == name and s.labels == labels]
    return match


def test_workers_samples_are_labelled_and_families_written_once() -> None:
    api, w0, w1 = Metrics(), Metrics(), Metrics()
    api.active_sessions.set(3)  # the router's cluster-wide count, also defined by each worker
    api.sessions_ended.labels("worker lost").inc()
    w0.active_sessions.set(1)
    w1.active_sessions.set(2)
    w0.frames_out.inc(7)
    w1.frames_out.inc(11)
    w0.frames_dropped.labels("driver").inc(2)  # a labelled counter only one worker has used
    w0.stage_latency.labels("added").observe(0.004)
    w1.stage_latency.labels("added").observe(0.3)
    w1.stage_latency.labels("added").observe(0.5)

    families = parsed(api.render([("worker-0", w0.render()), ("worker-1", w1.render())]))

    # The API's own samples keep their labels; each worker's gain worker="<name>".
    active = families["reenact_active_sessions"]
    assert value(active, "reenact_active_sessions") == 3
    assert value(active, "reenact_active_sessions", worker="worker-0") == 1
    assert value(active, "reenact_active_sessions", worker="worker-1") == 2
    ended = families["reenact_sessions_ended"]
    assert value(ended, "reenact_sessions_ended_total", reason="worker lost") == 1
    out = families["reenact_frames_out"]
    assert value(out, "reenact_frames_out_total", worker="worker-0") == 7
    assert value(out, "reenact_frames_out_total", worker="worker-1") == 11
    assert value(out, "reenact_frames_out_total") == 0  # the API process renders no frame
    dropped = families["reenact_frames_dropped"]
    assert value(dropped, "reenact_frames_dropped_total", where="driver", worker="worker-0") == 2
    assert len(dropped) == 1

    # A histogram's buckets, sum and count stay together, per worker.
    latency = families["reenact_stage_latency_seconds"]
    name = "reenact_stage_latency_seconds"
    assert value(latency, f"{name}_count", stage="added", worker="worker-0") == 1
    assert value(latency, f"{name}_count", stage="added", worker="worker-1") == 2
    assert value(latency, f"{name}_sum", stage="added", worker="worker-1") == pytest.approx(0.8)
    assert value(latency, f"{name}_bucket", stage="added", worker="worker-0", le="0.005") == 1
    assert value(latency, f"{name}_bucket", stage="added", worker="worker-1", le="0.35") == 1
    assert value(latency, f"{name}_bucket", stage="added", worker="worker-1", le="+Inf") == 2
    assert {s.labels.get("worker") for s in latency} == {"worker-0", "worker-1"}

    # Nothing of the workers' is lost, and nothing appears that no process defined.
    alone = {name: parsed(m.render()) for name, m in [("api", api), ("0", w0), ("1", w1)]}
    assert set(families) == {family for each in alone.values() for family in each}
    for family in families:
        assert len(families[family]) == sum(len(each.get(family, [])) for each in alone.values())


def test_without_others_the_registry_renders_as_it_is() -> None:
    metrics = Metrics()
    metrics.frames_in.inc()
    assert metrics.render([]) == metrics.render()
    assert merge(metrics.render(), []) == metrics.render()


def test_a_family_of_another_type_or_an_unreadable_exposition_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    own = b"# TYPE reenact_active_sessions gauge\nreenact_active_sessions 1.0\n"
    clash = b"# TYPE reenact_active_sessions counter\nreenact_active_sessions_total 5.0\n"
    good = b"# TYPE reenact_frames_out_total counter\nreenact_frames_out_total 4.0\n"
    with caplog.at_level(logging.WARNING, logger="service.metrics"):
        families = parsed(merge(own, [("a", clash), ("b", b"not { metrics"), ("c", good)]))
    assert families["reenact_active_sessions"] == [Sample("reenact_active_sessions", {}, 1.0)]
    assert value(families["reenact_frames_out"], "reenact_frames_out_total", worker="c") == 4
    assert "metrics of a: reenact_active_sessions is a counter" in caplog.text
    assert "metrics of b left out" in caplog.text
