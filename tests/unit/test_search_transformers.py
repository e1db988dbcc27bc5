"""Search strategies on the transformers backend, with tiny models built in the tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from aligntime import Aligner
from aligntime.strategies.base import REJECTED
from hf_tiny import tiny_lm, tiny_rm  # noqa: F401 - fixtures

PROMPT = "My child has a fever. What should I do?"


def _policy(tmp_path: Path, lm: Path, rm: Path, strategy: str) -> Path:
    path = tmp_path / "search-hf.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: search-hf
            generator:
              {{backend: transformers, model: "{lm}", max_tokens: 24, seed: 0, threads: 1}}
            n: 4
            scorers:
              - {{name: reward, kind: reward_model, model: "{rm}", threads: 1}}
            strategy: {strategy}
            """
        )
    )
    return path


def test_early_rejection_on_transformers_frees_dropped_candidates(
    tmp_path: Path,
    tiny_lm: Path,  # noqa: F811
    tiny_rm: Path,  # noqa: F811
) -> None:
    strategy = "{kind: early_rejection, chunk_tokens: 6, keep: 0.5}"
    res = Aligner.from_policy(_policy(tmp_path, tiny_lm, tiny_rm, strategy)).align(PROMPT)
    assert len(res.candidates) == 4
    rejected = [c for c in res.candidates if c.state == REJECTED]
    assert rejected, "a random model's answers run long; pruning must drop some"
    assert all(set(c.scores) == {"reward"} for c in res.candidates)
    assert res.usage.completion_tokens == sum(c.tokens for c in res.candidates)
    assert res.usage.completion_tokens < 4 * 24
    assert res.best is not None and res.candidates[res.best].state != REJECTED


@pytest.mark.parametrize("block", [1, 6])
def test_guided_on_transformers(
    tmp_path: Path,
    tiny_lm: Path,  # noqa: F811
    tiny_rm: Path,  # noqa: F811
    block: int,
) -> None:
    strategy = f"{{kind: guided, block_tokens: {block}, top_k: 3, weight: 1.0}}"
    res = Aligner.from_policy(_policy(tmp_path, tiny_lm, tiny_rm, strategy)).align(PROMPT)
    assert len(res.candidates) == 1
    chosen = res.candidates[0]
    assert 0 < chosen.tokens <= 24
    assert "reward" in chosen.scores and res.best == 0
