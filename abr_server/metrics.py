"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Metrics:
    """The service's counters, gauges and histograms."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.latency = Histogram("abr_decision_latency_seconds", "Decision latency (server side).",
                                 ["api"], buckets=LATENCY_BUCKETS_S, registry=r)  # fmt: skip
        self.batch_size = Histogram("abr_inference_batch_size", "Decisions per forward pass.",
                                    buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self.decisions = Counter("abr_decisions_total", "Decisions by who decided.", ["policy"], registry=r)
        self.fallbacks = Counter("abr_fallbacks_total", "Fallback answers by reason.", ["reason"], registry=r)
        self.video_decisions = Counter(
            "abr_video_decisions_total", "Decisions by the video the session plays.", ["video"], registry=r
        )
        self.errors = Counter("abr_errors_total", "Rejected or failed requests by kind.", ["kind"], registry=r)
        self.sessions = Gauge("abr_sessions", "Sessions kept in memory.", registry=r)
        self.model_swaps = Counter("abr_model_swaps_total", "Model activations.", registry=r)
        self.registry_refused = Counter("abr_registry_refused_total", "Model versions refused by validation "
                                        "(start-up, activation, registry watcher).", registry=r)  # fmt: skip
        self.registry_watch_errors = Counter("abr_registry_watch_errors_total", "Registry polls that failed "
                                             "(the watcher keeps polling).", registry=r)  # fmt: skip
        self.nonfinite_outputs = Counter("abr_nonfinite_outputs_total", "States whose logits were NaN or "
                                         "infinite (answered by the fallback rule).", registry=r)  # fmt: skip
        self.repeats = Counter("abr_repeated_reports_total", "Reports of the chunk answered last (retries), "
                               "answered from the session's last decision.", registry=r)  # fmt: skip
        self.telemetry_rows = Counter("abr_telemetry_rows_total", "Chunk reports journaled (durable).", registry=r)
        self.telemetry_spilled = Gauge("abr_telemetry_spilled_rows", "Chunk reports waiting in memory for the "
                                       "journal to be writable again.", registry=r)  # fmt: skip
        self.telemetry_dropped = Gauge("abr_telemetry_dropped_rows", "Chunk reports lost because the spill was "
                                       "full (since start).", registry=r)  # fmt: skip
        self.telemetry_outages = Gauge("abr_telemetry_outages", "Times the journal stopped being writable "
                                       "(since start).", registry=r)  # fmt: skip
        self.telemetry_unmoved = Gauge("abr_telemetry_unmoved_rows", "Journaled reports that cannot reach the "
                                       "database now (retried).", registry=r)  # fmt: skip
