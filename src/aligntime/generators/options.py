"""Sampling options every generator backend shares in the policy file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import ConfigDict, Field

from aligntime.registry import OptionsModel
from aligntime.types import GenerationParams

StopString = Annotated[str, Field(min_length=1)]
"""A stop string; an empty one would end every candidate before its first token."""


class SamplingOptions(OptionsModel):
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

    def resolve(self, params: GenerationParams) -> Sampling:
        """The settings of one call: the request's where it sets them, these defaults elsewhere."""
        return Sampling(
            max_tokens=params.max_tokens or self.max_tokens,
            temperature=self.temperature if params.temperature is None else params.temperature,
            top_p=params.top_p or self.top_p,
            seed=params.seed if params.seed is not None else self.seed,
            stop=tuple(params.stop) or tuple(self.stop),
        )


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one generation call, every default filled in."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]

    def seed_at(self, index: int) -> int | None:
        """The seed of the candidates that start at position ``index`` of the request."""
        return seed_at(self.seed, index)


def seed_at(seed: int | None, index: int) -> int | None:
    """The seed of the candidates that start at position ``index`` of a request.

    Candidate i is seeded with seed + i however the N candidates are split into
    calls (fanned-out requests, llama.cpp slot chunks, later rounds), so no two
    calls of one request draw the same samples and a fixed seed reproduces the set.
    """
    return None if seed is None else seed + index
