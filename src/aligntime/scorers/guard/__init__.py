"""Guard models as scorers: Llama Guard 3 and 4, ShieldGemma, Granite Guardian,
WildGuard and Qwen3Guard, each in its own prompt format (see :mod:`.scorer`)."""

from aligntime.scorers.guard.scorer import GuardOptions, GuardScorer, GuardVerdict
from aligntime.scorers.guard.taxonomy import Category

__all__ = ["Category", "GuardOptions", "GuardScorer", "GuardVerdict"]
