"""Early rejection: start many answers, score them while they are written, finish few.

After Speculative Rejection (Sun et al., 2024): a weak answer usually shows it
early. ``early_rejection`` starts ``initial`` candidates (default: the
request's N), and every ``chunk_tokens`` tokens scores the partial answers
with the policy's own scorers, keeps the best ``keep`` share (those that
already fail a gate go first) and continues only those. When ``min_keep``
remain they are written to the end in one step. The finished answers are
scored again as complete answers, and the best that passed every gate wins.

Dropping a candidate frees its slot: on llama.cpp the survivors decode as a
smaller batch, and no token is spent on an answer that has been rejected.
Dropped candidates stay in the result (``state`` "rejected", with the partial
text and the scores they were dropped on) so the choice can be audited.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

from pydantic import ConfigDict, Field

from aligntime.registry import OptionsModel
from aligntime.strategies.base import (
    PARTIAL,
    REJECTED,
    SearchContext,
    SearchOutcome,
    SearchStrategy,
)
from aligntime.types import Candidate, rank_key

log = logging.getLogger(__name__)


@dataclass
class _Draft:
    """One answer being written."""

    text: str
    tokens: int
    finished: bool


class EarlyRejectionOptions(OptionsModel):
    """Options of the ``early_rejection`` strategy."""

    model_config = ConfigDict(extra="forbid")

    initial: int | None = Field(None, ge=1, le=256)
    """Candidates started (default: the request's N)."""
    chunk_tokens: int = Field(32, ge=1)
    """Tokens written between two checks of the partial answers."""
    keep: float = Field(0.5, gt=0.0, lt=1.0)
    """Share of the partial answers kept at each check (rounded up)."""
    min_keep: int = Field(1, ge=1)
    """Once this few remain, they are written to the end without further checks."""
    max_checks: int | None = Field(None, ge=1)
    """At most this many checks (default: until ``min_keep`` remain)."""


class EarlyRejection(SearchStrategy):
    """Prune weak partial answers every ``chunk_tokens`` tokens; finish the rest."""

    name = "early_rejection"

    Options = EarlyRejectionOptions

    def __init__(self, options: EarlyRejectionOptions | None = None) -> None:
        self.options = options or EarlyRejectionOptions()

    async def search(self, ctx: SearchContext) -> SearchOutcome:
        o = self.options
        start = o.initial or ctx.n
        first = min(o.chunk_tokens, ctx.max_tokens)
        generation = await ctx.generate(start, ctx.with_max_tokens(first))
        drafts = [
            _Draft(c.text, c.tokens, _finished(c, c.tokens, ctx.max_tokens))
            for c in generation.candidates
        ]
        rejected: list[Candidate] = []
        checks = 0
        while True:
            open_ = [d for d in drafts if not d.finished]
            if not open_:
                break
            written = max(d.tokens for d in open_)
            if len(open_) > o.min_keep and (o.max_checks is None or checks < o.max_checks):
                checks += 1
                kept, dropped = await self._prune(ctx, open_)
                rejected += dropped
                drafts = [d for d in drafts if d.finished or any(d is k for k in kept)]
                open_ = kept
                step = min(o.chunk_tokens, ctx.max_tokens - written)
                if len(open_) <= o.min_keep or (
                    o.max_checks is not None and checks >= o.max_checks
                ):
                    step = ctx.max_tokens - written
            else:
                step = ctx.max_tokens - written
            extension = await ctx.extend([d.text for d in open_], step)
            for draft, more in zip(open_, extension.candidates, strict=True):
                draft.text += more.text
                draft.tokens += more.tokens
                draft.finished = _finished(more, draft.tokens, ctx.max_tokens)
        complete = [
            Candidate(
                text=d.text,
                tokens=d.tokens,
                finish_reason="length" if d.tokens >= ctx.max_tokens else "stop",
            )
            for d in drafts
        ]
        out = ctx.outcome(await ctx.score(complete) + rejected)
        log.debug(
            "early rejection: %d started, %d finished, %d checks, %d tokens",
            start,
            len(complete),
            checks,
            out.usage.completion_tokens,
        )
        return out

    async def _prune(
        self, ctx: SearchContext, open_: list[_Draft]
    ) -> tuple[list[_Draft], list[Candidate]]:
        """Score the partial answers; keep the best share, return the rest as rejected."""
        # An unfinished draft is one the backend cut at the chunk's token limit.
        scored = await ctx.score(
            [
                Candidate(text=d.text, tokens=d.tokens, finish_reason="length", state=PARTIAL)
                for d in open_
            ]
        )
        order = sorted(
            range(len(open_)),
            key=lambda i: rank_key(scored[i]),
            reverse=True,
        )
        n_keep = max(self.options.min_keep, math.ceil(self.options.keep * len(open_)))
        kept = [open_[i] for i in sorted(order[:n_keep])]
        dropped = [replace(scored[i], state=REJECTED) for i in order[n_keep:]]
        return kept, dropped


def _finished(piece: Candidate, written: int, max_tokens: int) -> bool:
    """Whether an answer ended: the model stopped, or it used its whole token limit."""
    return piece.finish_reason != "length" or written >= max_tokens
