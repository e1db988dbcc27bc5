"""Reward-guided decoding: steer each step of one answer by the scorers.

After ARGS (Khanov et al., 2024). The answer grows one step at a time; at each
step ``top_k`` continuations are proposed and the one with the highest

    log-probability + weight x combined score of the extended answer

is kept. Continuations whose extended answer fails a gate are never kept while
another remains. Two step sizes:

- ``block_tokens: 1`` — token level, as in ARGS: the ``top_k`` most likely next
  tokens (from the backend's next-token log-probabilities), each scored.
- ``block_tokens: B > 1`` — blockwise: ``top_k`` sampled continuations of B
  tokens each, scored once per block. Far fewer scorer calls per token, which
  is what makes guidance affordable with an LLM judge among the scorers.

One answer is produced per request (the request's N does not apply). Any
backend that continues partial answers works: ``llamacpp``, ``transformers``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from pydantic import ConfigDict, Field

from aligntime.registry import OptionsModel
from aligntime.strategies.base import (
    COMPLETE,
    PARTIAL,
    SearchContext,
    SearchOutcome,
    SearchStrategy,
)
from aligntime.types import Candidate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Option:
    """One proposed continuation of the answer so far."""

    text: str
    tokens: int
    logprob: float
    ends: bool


class GuidedOptions(OptionsModel):
    """Options of the ``guided`` strategy."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(4, ge=2, le=20)
    """Continuations proposed and scored at each step."""
    weight: float = Field(2.0, ge=0.0)
    """Weight of the combined score against the log-probability (0: greedy decoding)."""
    block_tokens: int = Field(16, ge=1)
    """Tokens per step: 1 for token-level guidance, more for blockwise."""


class Guided(SearchStrategy):
    """ARGS-style decoding: maximise log-probability plus weight x score, step by step."""

    name = "guided"

    Options = GuidedOptions

    def __init__(self, options: GuidedOptions | None = None) -> None:
        self.options = options or GuidedOptions()

    async def search(self, ctx: SearchContext) -> SearchOutcome:
        text, tokens, steps = "", 0, 0
        last: Candidate | None = None
        while tokens < ctx.max_tokens:
            options = await self._propose(ctx, text, ctx.max_tokens - tokens)
            if not options:
                break
            scored = await ctx.score(
                [
                    Candidate(
                        text=text + opt.text,
                        tokens=tokens + opt.tokens,
                        finish_reason="stop" if opt.ends else "length",
                        state=PARTIAL,
                    )
                    for opt in options
                ]
            )
            pick = max(
                range(len(options)),
                key=lambda i: (scored[i].passed, self._value(options[i], scored[i])),
            )
            chosen = options[pick]
            text, tokens, steps = text + chosen.text, tokens + chosen.tokens, steps + 1
            last = scored[pick]
            if chosen.ends:
                break
        finish = "length" if tokens >= ctx.max_tokens else "stop"
        if last is None or not text:
            final = Candidate(text=text, tokens=tokens)
        else:
            # Rescore as a complete answer: a scorer may judge an unfinished one differently.
            final = replace(last, finish_reason=finish, state=COMPLETE)
        log.debug("guided: %d steps, %d tokens", steps, tokens)
        return ctx.outcome(await ctx.score([final]))

    def _value(self, option: _Option, scored: Candidate) -> float:
        score = scored.score if scored.score is not None and scored.score == scored.score else 0.0
        return option.logprob + self.options.weight * score

    async def _propose(self, ctx: SearchContext, text: str, room: int) -> list[_Option]:
        """The ``top_k`` continuations of ``text``."""
        k = self.options.top_k
        if self.options.block_tokens == 1:
            top = await ctx.next_token_logprobs(text, top_k=k)
            ranked = sorted(top.items(), key=lambda kv: kv[1], reverse=True)[:k]
            # An empty token string is the end of the turn (see Generator.next_token_logprobs).
            return [_Option(tok, 0 if tok == "" else 1, lp, tok == "") for tok, lp in ranked]
        step = min(self.options.block_tokens, room)
        if text:
            generation = await ctx.extend([text] * k, step)
        else:  # the first block shares one prompt: one n-sampling request
            generation = await ctx.generate(k, ctx.with_max_tokens(step))
        options = []
        seen: set[str] = set()
        for c in generation.candidates:
            if c.text in seen:  # identical samples would only be scored twice
                continue
            seen.add(c.text)
            options.append(
                _Option(
                    c.text, c.tokens, c.logprob or 0.0, c.finish_reason != "length" or not c.text
                )
            )
        return options
