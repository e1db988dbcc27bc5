"""Prometheus metrics of one server, in a registry of its own.

A registry per app (not the process-global default) lets tests and several
apps in one process count independently.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from aligntime.types import Result

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Fine buckets at the low end: the server's own overhead is measured in milliseconds.
_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035,
    0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0,
)  # fmt: skip


class Metrics:
    """Counters and histograms the server updates per request."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter = self._counter
        self.requests = counter(
            "aligntime_requests", "HTTP requests answered", "endpoint", "status"
        )
        self.in_flight = Gauge(
            "aligntime_requests_in_flight",
            "Chat completions being answered now",
            registry=self.registry,
        )
        self.stage = Histogram(
            "aligntime_stage_seconds",
            "Seconds per stage of a chat completion: input (the input gate), generate, score, "
            "align (the Aligner in all), total (inside the server), overhead (total minus align)",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.candidates = counter("aligntime_candidates_generated", "Candidates sampled", "policy")
        self.tokens = counter(
            "aligntime_completion_tokens", "Tokens generated, every candidate", "policy"
        )
        self.gate_failures = counter(
            "aligntime_gate_failures", "Candidates that failed a gate", "policy", "scorer"
        )
        self.fallbacks = counter(
            "aligntime_fallbacks", "Requests answered with the policy's fallback text", "policy",
            "reason",
        )  # fmt: skip
        self.scorer_errors = counter(
            "aligntime_scorer_errors", "Scorer failures", "policy", "scorer"
        )
        self.input_actions = counter(
            "aligntime_input_actions",
            "Input-gate verdicts: pass, steer or refuse (refuse without sampling)", "policy",
            "action",
        )  # fmt: skip
        self.batch_size = Histogram(
            "aligntime_scorer_batch_requests",
            "Requests coalesced into one scorer batch",
            ["scorer"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        # Children cached: labels() costs a dict lookup and a lock per call otherwise.
        self.generate_s = self.stage.labels("generate")
        self.score_s = self.stage.labels("score")
        self.align_s = self.stage.labels("align")
        self.total_s = self.stage.labels("total")
        self.overhead_s = self.stage.labels("overhead")
        self.input_s = self.stage.labels("input")

    def observe_result(self, result: Result) -> None:
        """Count one finished alignment (a request the input gate refused included)."""
        policy = result.policy
        if result.input is not None:
            self.input_actions.labels(policy, result.input.action).inc()
            self.input_s.observe(result.input.seconds)
        if result.refused:
            return  # nothing was generated or scored: no stage times to record
        self.generate_s.observe(result.timings.generate_s)
        self.score_s.observe(result.timings.score_s)
        self.candidates.labels(policy).inc(len(result.candidates))
        self.tokens.labels(policy).inc(result.usage.completion_tokens)
        for cand in result.candidates:
            for gate in cand.gate_failures:
                # "guard (S1 Violent Crimes)": the series is per scorer, not per category set.
                self.gate_failures.labels(policy, gate.split(" (", 1)[0]).inc()

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
