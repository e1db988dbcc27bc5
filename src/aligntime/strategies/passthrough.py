"""Pass-through: prompting only, one candidate, no reranking."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ConfigDict

from aligntime.registry import OptionsModel
from aligntime.strategies.base import Decision, RoundState, Strategy
from aligntime.types import Candidate


class PassThroughOptions(OptionsModel):
    """Options of the ``passthrough`` strategy (it has none)."""

    model_config = ConfigDict(extra="forbid")


class PassThrough(Strategy):
    """Sample a single candidate and show it if it passed the gates.

    This is the prompting-only lever: the prompt policy still applies and the
    scorers still run (so gates still protect the user and reports still show
    scores), but there is nothing to choose between. Whatever N was requested,
    only one candidate is sampled.
    """

    name = "passthrough"

    Options = PassThroughOptions

    def __init__(self, options: PassThroughOptions | None = None) -> None:
        self.options = options or PassThroughOptions()

    def initial_n(self, requested: int) -> int:
        """Always one: extra candidates would never be looked at."""
        return 1

    def decide(self, candidates: Sequence[Candidate], state: RoundState) -> Decision:
        """Candidate 0 if it passed, else ``None`` (the policy's fallback)."""
        if not candidates:
            return Decision(None, reason="no candidate was sampled")
        if candidates[0].passed:
            return Decision(0, reason="pass-through: the only candidate passed the gates")
        failed = ", ".join(candidates[0].gate_failures) or "a gate"
        return Decision(None, reason=f"pass-through: the candidate failed {failed}")
