"""Prometheus metrics, in a registry owned by one app (tests build many apps per process).

In cluster mode every worker process has its own :class:`Metrics`; the API's ``/metrics``
shows them all through :func:`merge`, each worker's samples labelled ``worker="<name>"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

# Seconds; real-time budgets live between 1 ms and a few hundred.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.08, 0.12, 0.2, 0.35, 0.6, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.active_sessions = Gauge(
            "reenact_active_sessions", "Sessions currently registered", registry=self.registry
        )
        self.sessions_total = Counter(
            "reenact_sessions", "Sessions created", registry=self.registry
        )
        self.sessions_ended = Counter(
            "reenact_sessions_ended",
            "Sessions ended, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "reenact_sessions_rejected",
            "Session requests refused because the server was full",
            registry=self.registry,
        )
        self.frames_in = Counter(
            "reenact_frames_in", "Driver frames received", registry=self.registry
        )
        self.frames_out = Counter(
            "reenact_frames_out", "Avatar frames handed to the encoder", registry=self.registry
        )
        self.frames_dropped = Counter(
            "reenact_frames_dropped",
            "Frames dropped so latency cannot grow, by where they were dropped",
            ["where"],
            registry=self.registry,
        )
        self.stage_latency = Histogram(
            "reenact_stage_latency_seconds",
            "Per-frame latency of each stage (added = server arrival to encoder hand-off)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.frame_errors = Counter(
            "reenact_frame_errors", "Frames whose processing raised", registry=self.registry
        )
        self.keypoint_bytes = Counter(
            "reenact_keypoint_bytes",
            "Keypoint stream payload bytes sent by relay sessions, by message kind",
            ["kind"],
            registry=self.registry,
        )

        self.scrape_errors = Counter(
            "reenact_cluster_scrape_errors",
            "Cluster workers left out of a /metrics scrape (no answer in time, failed or died)",
            ["worker"],
            registry=self.registry,
        )

    def render(self, others: Sequence[tuple[str, bytes]] = ()) -> bytes:
        """This registry in the Prometheus text format, with ``others`` merged in (see
        :func:`merge`): (process name, exposition) pairs, e.g. the cluster's workers'."""
        own = generate_latest(self.registry)
        return merge(own, others) if others else own


def merge(own: bytes, others: Iterable[tuple[str, bytes]], label: str = "worker") -> bytes:
    """One exposition (Prometheus text format 0.0.4) from this process's and others'.

    Each of ``others`` is a (name, exposition) pair; its samples get ``label="<name>"`` added,
    ``own``'s are kept as they are.  A family that several of them define is written once, with
    all their samples: the text format forbids a family appearing twice.  So a family counted
    both here and in the others (the cluster API's ``reenact_active_sessions``, say) holds this
    process's series without the label and each other's with it; summing over both counts
    twice.  The first definition's help text and type win; another's samples of a family of a
    different type, or an exposition that does not parse, are left out (and logged).
    """
    families: dict[str, Metric] = {}
    for name, text in [(None, own), *others]:
        try:
            parsed = list(text_string_to_metric_families(text.decode()))
        except ValueError as error:  # the parser's only complaint about a malformed text
            log.warning("metrics of %s left out: not Prometheus text: %s", name, error)
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            elif merged.type != family.type:
                log.warning(
                    "metrics of %s: %s is a %s here, not a %s: left out",
                    name,
                    family.name,
                    family.type,
                    merged.type,
                )
                continue
            merged.samples.extend(
                family.samples
                if name is None
                else [_labelled(s, label, name) for s in family.samples]
            )
    return generate_latest(_Families(list(families.values())))


def _labelled(sample: Sample, label: str, value: str) -> Sample:
    return sample._replace(labels={**sample.labels, label: value})


class _Families:
    """A collector of already-built families: what :func:`generate_latest` renders."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
