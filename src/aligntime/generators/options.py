"""Sampling options every generator backend shares in the policy file."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

StopString = Annotated[str, Field(min_length=1)]
"""A stop string; an empty one would end every candidate before its first token."""


class SamplingOptions(BaseModel):
    """Defaults a policy sets for its generator; a request may override them."""

    model_config = ConfigDict(extra="forbid")

    model: str
    """Catalogue name (`aligntime models list`) or path of the model."""
    temperature: float = Field(0.8, ge=0.0, le=5.0)
    """Sampling temperature; diversity between candidates needs it above 0."""
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    """Nucleus sampling: sample from the smallest token set with this much probability."""
    max_tokens: int = Field(256, ge=1, le=32768)
    """Most tokens one candidate may have."""
    seed: int | None = None
    """Base random seed; candidate i of a request uses seed + i, for reproducible runs."""
    stop: list[StopString] = Field(default_factory=list)
    """Strings that end a candidate when generated."""
