"""A deterministic generator for tests and examples. Never a default.

It answers from a fixed list of responses (cycled), or, without one, with
templated text derived from the request, so pipelines can be exercised end to
end without a model. ``fail_times`` makes the first calls raise, to test how
callers degrade.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence

from pydantic import Field

from aligntime.errors import BackendError
from aligntime.generators.base import Capabilities, Generator, PartialAnswers
from aligntime.generators.options import SamplingOptions
from aligntime.types import Candidate, Generation, GenerationParams, Message, ToolCall, Usage


class FakeOptions(SamplingOptions):
    """Options of the ``fake`` backend."""

    model: str = "fake"
    """Ignored; kept so every backend takes the same keys."""
    responses: list[str] = Field(default_factory=list)
    """Answers to return, cycled across candidates and calls. When the request offers
    tools, an answer that is a JSON object with a ``tool_calls`` list of ``{"name",
    "arguments"}`` objects is returned as those calls (as a real backend parses them)."""
    delay_s: float = Field(0.0, ge=0.0)
    """Seconds to wait per call, to imitate a slow backend."""
    fail_times: int = Field(0, ge=0)
    """Raise a BackendError on this many first calls."""
    yes_logprob: float = -0.7
    """Log-probability reported for "Yes" by ``next_token_logprobs``."""
    a_logprob: float = -0.5
    """Log-probability reported for "A" (pairwise judges; "B" gets -1.0): a pure position bias."""


class FakeGenerator(Generator):
    """Deterministic stand-in for a real backend."""

    Options = FakeOptions
    name = "fake"
    capabilities = Capabilities(
        n_sampling=True, logprobs=True, token_steps=True, response_format=True, tools=True
    )

    def __init__(self, options: FakeOptions | None = None) -> None:
        self.options = options or FakeOptions()
        self.calls = 0
        self._cursor = 0

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        self.calls += 1
        if self.options.delay_s:
            await asyncio.sleep(self.options.delay_s)
        if self.calls <= self.options.fail_times:
            raise BackendError("the fake backend was told to fail")
        request = messages[-1].content if messages else ""
        sampling = self.options.resolve(params)
        limit = sampling.max_tokens
        candidates = []
        stops = sampling.stop
        for _ in range(n):
            text = _cut_at_stop(self._next_text(request), stops)
            words = text.split()
            finish = "stop"
            if len(words) > limit:
                words, finish = words[:limit], "length"
                text = " ".join(words)
            calls = _tool_calls(text, self._cursor) if params.tools is not None else ()
            if calls:
                text, finish = "", "tool_calls"
            candidates.append(
                Candidate(text=text, tokens=len(words), finish_reason=finish, tool_calls=calls)
            )
            self._cursor += 1
        prompt_tokens = sum(len(m.content.split()) for m in messages)
        return Generation(candidates, Usage(prompt_tokens, sum(c.tokens for c in candidates)))

    async def continue_answers(self, partial: PartialAnswers) -> Generation:
        """Continue each prefix with the rest of the configured response it begins
        (a word is a token); a prefix that begins none of them is complete."""
        max_tokens = partial.max_tokens
        self.calls += 1
        if self.options.delay_s:
            await asyncio.sleep(self.options.delay_s)
        if self.calls <= self.options.fail_times:
            raise BackendError("the fake backend was told to fail")
        candidates = []
        for prefix in partial.prefixes:
            done = prefix.split()
            # Several responses may begin with the prefix; take them in turn.
            matches = [
                words[len(done) :]
                for words in (r.split() for r in self.options.responses)
                if words[: len(done)] == done and len(words) > len(done)
            ]
            rest = matches[self._cursor % len(matches)] if matches else []
            self._cursor += 1
            new = rest[:max_tokens]
            text = " ".join(new)
            if text and prefix and not prefix[-1].isspace():
                text = " " + text
            finish = "length" if len(rest) > max_tokens else "stop"
            candidates.append(Candidate(text=text, tokens=len(new), finish_reason=finish))
        prompt_tokens = sum(len(m.content.split()) for m in partial.messages)
        prompt_tokens *= len(partial.prefixes)
        return Generation(candidates, Usage(prompt_tokens, sum(c.tokens for c in candidates)))

    def _next_text(self, request: str) -> str:
        if self.options.responses:
            return self.options.responses[self._cursor % len(self.options.responses)]
        tag = hashlib.sha256(f"{request}|{self._cursor}".encode()).hexdigest()[:6]
        return f"Answer {self._cursor} ({tag}) to: {request}"

    async def next_token_logprobs(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        o = self.options
        return {"Yes": o.yes_logprob, "No": -1.0, "A": o.a_logprob, "B": -1.0}


def _tool_calls(text: str, index: int) -> tuple[ToolCall, ...]:
    """The calls an answer of the form ``{"tool_calls": [{"name", "arguments"}]}`` makes
    (``arguments`` an object or its JSON text); none for any other text."""
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    entries = value.get("tool_calls") if isinstance(value, dict) else None
    if not isinstance(entries, list):
        return ()
    calls = []
    for k, entry in enumerate(entries):
        arguments = entry.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(ToolCall(str(entry.get("name")), arguments, f"call_{index}_{k}"))
    return tuple(calls)


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text up to its first stop string, as a real backend would end it."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]
