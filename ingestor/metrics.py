"""Prometheus metrics. Each stateful part takes a Metrics built on a registry it is given, so tests
build their own registry and nothing leaks between them."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    rows_written: Counter
    rows_rejected: Counter
    dedup_fallbacks: Counter
    write_retries: Counter
    batch_rows: Histogram
    commit_seconds: Histogram
    pending_rows: Gauge
    maintenance_runs: Counter
    maintenance_seconds: Histogram
    maintenance_last_success: Gauge
    items_accepted: Counter
    items_rejected: Counter
    http_requests: Counter
    http_seconds: Histogram
    alerts: Counter
    input_not_stored: Counter
    inflight_bytes: Gauge


def build_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """Create the project's metrics on `registry` (a fresh one when None)."""
    r = registry if registry is not None else CollectorRegistry()
    return Metrics(
        registry=r,
        rows_written=Counter("smart_dairy_rows_written", "Rows committed by the writer", ["table"], registry=r),
        rows_rejected=Counter("smart_dairy_rows_rejected", "Rows the database refused, dead-lettered",
                              ["table"], registry=r),
        dedup_fallbacks=Counter("smart_dairy_dedup_fallbacks", "Batches that held stored rows and were merged",
                                ["table"], registry=r),
        write_retries=Counter("smart_dairy_write_retries", "Batch commits retried after a database failure",
                              ["table"], registry=r),
        batch_rows=Histogram("smart_dairy_batch_rows", "Rows per committed batch", ["table"],
                             buckets=_BATCH_BUCKETS, registry=r),
        commit_seconds=Histogram("smart_dairy_commit_seconds", "Time to store and commit one batch", ["table"],
                                 registry=r),
        pending_rows=Gauge("smart_dairy_pending_rows", "Rows accepted and not yet committed", ["table"],
                           registry=r),
        maintenance_runs=Counter("smart_dairy_maintenance_runs", "Maintenance steps run", ["step", "outcome"],
                                 registry=r),
        maintenance_seconds=Histogram("smart_dairy_maintenance_seconds", "Duration of a maintenance step",
                                      ["step"], registry=r),
        maintenance_last_success=Gauge("smart_dairy_maintenance_last_success",
                                       "Unix time of the last successful maintenance step", ["step"], registry=r),
        items_accepted=Counter("smart_dairy_items_accepted", "Items (readings, sessions, reads) stored",
                               ["channel", "table"], registry=r),
        items_rejected=Counter("smart_dairy_items_rejected", "Items rejected and dead-lettered, by the field at fault",
                               ["channel", "reason"], registry=r),
        http_requests=Counter("smart_dairy_http_requests", "HTTP requests answered", ["route", "status"],
                              registry=r),
        http_seconds=Histogram("smart_dairy_http_seconds", "HTTP request duration, body read to answer", ["route"],
                               buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=r),
        alerts=Counter("smart_dairy_alerts", "Alerts raised and resolved, by rule", ["rule", "event"], registry=r),
        input_not_stored=Counter("smart_dairy_input_not_stored", "Rejected input counted but not dead-lettered: "
                                 "unauthenticated, or past its farm's hourly allowance", ["channel", "reason"],
                                 registry=r),
        inflight_bytes=Gauge("smart_dairy_http_inflight_bytes", "What request bodies being read and decoded cost "
                             "now (bytes received x api.DECODED_COST)", registry=r),
    )
