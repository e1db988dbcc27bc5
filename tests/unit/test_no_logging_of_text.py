"""The README's promise: prompts and answers are never logged.

One server run (fake backend, audit log on) goes through the paths that log:
a normal answer, a stream, a 4xx, an unknown model, a backend failure, a gate
scorer failing closed. Every logger in the process records at DEBUG meanwhile,
and no record may hold the distinctive prompt or answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from aligntime.aligner import Aligner, build
from aligntime.policy.loader import parse_policy
from aligntime.scorers.base import Scorer
from aligntime.server import ServerOptions, create_app
from aligntime.server.audit import AuditLog, read_requests
from aligntime.server.batching import BatchingScorer
from aligntime.server.metering import MeteredGenerator
from aligntime.server.metrics import Metrics
from aligntime.server.service import AlignmentService
from aligntime.server.testing import LiveServer
from aligntime.types import Candidate, Message

PROMPT_MARK = "zebraquartz5519"
ANSWER_MARK = "okapivelvet8842"
PROMPT = f"My secret question {PROMPT_MARK}: how long do I boil an egg?"
ANSWER = f"Boil it for seven minutes, {ANSWER_MARK}."


def _policy(name: str, generator: str) -> str:
    return (
        f"name: {name}\n"
        f"generator: {generator}\n"
        "n: 2\n"
        "scorers:\n"
        "  - {name: safety, kind: classifier, gate: {max: 0.6}}\n"
        "  - {name: rules, kind: rules}\n"
        'fallback: "Sorry, I cannot answer that right now."\n'
    )


class Broken(Scorer):
    """A gate scorer whose model is unreachable."""

    direction = "lower"

    def __init__(self, name: str) -> None:
        self.name = name

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        raise RuntimeError("the safety model is unreachable")


def _aligner(text: str, broken: str | None = None) -> Aligner:
    policy = parse_policy(text)
    scorers: list[Scorer] = []
    for spec in policy.scorers:
        inner = (
            Broken(spec.name)
            if spec.name == broken
            else build("scorer", spec.kind, spec.options(), name=spec.name)
        )
        scorers.append(BatchingScorer(inner))
    generator = MeteredGenerator(build("generator", "fake", policy.generator.options()))
    return Aligner(policy, generator=generator, scorers=scorers)


class _Everything(logging.Handler):
    """Keeps every record it is handed, formatted the way a log file would show it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self._seen: set[int] = set()
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if id(record) in self._seen:  # reached through more than one logger
            return
        self._seen.add(id(record))
        self.records.append(record)
        # format() adds the traceback and stack, where an exception's text would show.
        self.lines.append(f"{self.format(record)} args={record.args!r}")


class _AllLoggers:
    """Puts every logger of the process at DEBUG into one handler; undoes it afterwards."""

    def __init__(self, handler: _Everything) -> None:
        self.handler = handler
        self.saved: dict[logging.Logger, tuple[int, bool]] = {}

    def capture(self) -> None:
        """Include loggers created since the last call (uvicorn makes its own on start)."""
        loggers = [logging.getLogger()] + [
            lg
            for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger)
        ]
        for lg in loggers:
            if lg not in self.saved:
                self.saved[lg] = (lg.level, lg.disabled)
                lg.addHandler(self.handler)
            lg.setLevel(logging.DEBUG)
            lg.disabled = False

    def restore(self) -> None:
        for lg, (level, disabled) in self.saved.items():
            lg.removeHandler(self.handler)
            lg.setLevel(level)
            lg.disabled = disabled


@pytest.fixture
def every_log_record() -> Iterator[tuple[_Everything, _AllLoggers]]:
    handler = _Everything()
    loggers = _AllLoggers(handler)
    loggers.capture()
    try:
        yield handler, loggers
    finally:
        loggers.restore()


def test_no_log_record_holds_a_prompt_or_an_answer(
    tmp_path: Path, every_log_record: tuple[_Everything, _AllLoggers]
) -> None:
    records, loggers = every_log_record
    answers = f"{{backend: fake, responses: [{ANSWER!r}]}}"
    aligners = [
        _aligner(_policy("good", answers)),
        _aligner(_policy("down", "{backend: fake, fail_times: 10}")),
        _aligner(_policy("closed", answers), broken="safety"),
    ]
    options = ServerOptions(
        audit_db=tmp_path / "audit.db", max_tokens=64, anonymous_rights=frozenset({"candidates"})
    )
    audit = AuditLog(tmp_path / "audit.db")
    service = AlignmentService(aligners, options, Metrics(), audit)
    app = create_app(service)
    messages = [{"role": "user", "content": PROMPT}]
    # Captured again once uvicorn has configured its loggers, so they record at DEBUG too.
    # Generous time-outs: the first request loads the safety classifier.
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=120) as client:
        loggers.capture()
        url = "/v1/chat/completions"
        ok = client.post(
            url,
            json={"model": "good", "messages": messages, "aligntime": {"return_candidates": True}},
        )
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == ANSWER
        with client.stream(
            "POST", url, json={"model": "good", "messages": messages, "stream": True}
        ) as s:
            streamed = "".join(s.iter_lines())
        assert ANSWER_MARK in streamed
        too_long = {"model": "good", "messages": messages, "max_tokens": 65}
        assert client.post(url, json=too_long).status_code == 400
        bad_role = {"model": "good", "messages": [{"role": "wizard", "content": PROMPT}]}
        assert client.post(url, json=bad_role).status_code == 400
        unknown = {"model": "nope", "messages": messages}
        assert client.post(url, json=unknown).status_code == 404
        assert client.post(url, json={"model": "down", "messages": messages}).status_code == 503
        closed = client.post(url, json={"model": "closed", "messages": messages})
        assert closed.status_code == 200 and closed.json()["aligntime"]["fail_closed"]
    audit.close()

    # The texts did go somewhere: into the audit log, which is where they belong.
    stored = read_requests(tmp_path / "audit.db")
    assert any(PROMPT_MARK in str(r["messages"]) for r in stored)
    assert any(ANSWER_MARK in str(r["answer"]) for r in stored)
    # The capture is live: the failing scorer was logged (without any text).
    assert any("failing closed" in line for line in records.lines)
    leaked = [line for line in records.lines if PROMPT_MARK in line or ANSWER_MARK in line]
    assert leaked == []
