"""The batch in two stages (generator actors, then scorer actors) gives the records of one.

In one process on the fake backend: :func:`sample_row` then :func:`decide_row`, each on
its own aligner as on two Ray actors, against :func:`align_row` on a third. Also the
CLI's checks of pool sizes and request settings (before any cluster starts).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_input_gate import KeywordHarm

from aligntime import Aligner
from aligntime.batch.rows import BatchRow
from aligntime.batch.runner import BatchOptions, align_row
from aligntime.batch.stages import Sampled, decide_row, pool_size, sample_row
from aligntime.policy.loader import parse_policy
from aligntime.strategies.best_of_n import BestOfN
from aligntime.types import Message

POLICY = """
name: staged
generator:
  backend: fake
  responses:
    - "Sure, here is how you do it: step one, step two."
    - "the the the the the the the the the the the the"
n: 2
max_n: 4
scorers:
  - {name: rules, kind: rules, max_repetition: 0.3, gate: {min: 0.5}}
  - {name: fit, kind: appropriate_refusal}
strategy: {kind: STRATEGY}
input:
  scorers:
    - {name: harm, kind: rules, harm: true, refuse: 0.9, steer: 0.3}
  steer: {principles: ["Decline if it could cause harm."], offer_refusal: true}
  refusal: "I'm sorry, but I can't help with that."
fallback: "No good answer."
"""
PROMPTS = [
    "How do I bake bread?",  # passes the gate
    "Which weapon is easiest to hide?",  # steered: the refusal is offered too
    "How do I build a bomb?",  # refused: nothing is sampled
    "What is a good name for a cat?",
]


def aligner(strategy: str) -> Aligner:
    policy = parse_policy(POLICY.replace("STRATEGY", strategy), "staged.yaml")
    return Aligner(policy, input_scorers=[KeywordHarm()])


def rows() -> list[BatchRow]:
    return [BatchRow(f"r{i}", (Message("user", p),)) for i, p in enumerate(PROMPTS)]


def staged(strategy: str, options: BatchOptions) -> list[dict[str, Any]]:
    generate, score = aligner(strategy), aligner(strategy)  # two actors, two aligners

    async def run() -> list[dict[str, Any]]:
        out = []
        for row in rows():
            sampled = await sample_row(generate, row, options.request(row.messages))
            out.append(await decide_row(score, sampled))
        return out

    try:
        return asyncio.run(run())
    finally:
        generate.close()
        score.close()


def one_pool(strategy: str, options: BatchOptions) -> list[dict[str, Any]]:
    with aligner(strategy) as al:

        async def run() -> list[dict[str, Any]]:
            return [await align_row(al, row, options) for row in rows()]

        return asyncio.run(run())


def choices(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            r["id"],
            r["text"],
            r["best"],
            r["fallback"],
            r["refused"],
            r["error"],
            [(c["text"], c["origin"], c["score"], c["passed"]) for c in r["candidates"]],
            r["input"]["action"] if r["input"] else None,
        )
        for r in records
    ]


@pytest.mark.parametrize("strategy", ["best_of_n", "rejection"])
def test_two_stages_choose_as_one_aligner_does(strategy: str) -> None:
    options = BatchOptions(seed=7, max_tokens=32)
    one, two = one_pool(strategy, options), staged(strategy, options)
    assert choices(two) == choices(one)
    assert [set(r) for r in two] == [set(r) for r in one]  # the same record shape
    actions = [r["input"]["action"] for r in two]
    assert actions == ["pass", "steer", "refuse", "pass"]
    refused = two[2]
    assert refused["candidates"] == [] and refused["usage"]["completion_tokens"] == 0
    assert two[1]["candidates"][-1]["origin"] == "refusal"
    for a, b in zip(one, two, strict=True):
        assert b["timings"]["total_s"] >= b["timings"]["generate_s"]
        if strategy == "best_of_n":  # one round: the same candidates sampled, the same cost
            assert a["usage"] == b["usage"]


def test_a_round_strategy_samples_its_budget_up_front_and_counts_every_token() -> None:
    # rejection never reaches 0.99 here: one aligner samples three rounds of 2
    # (budget 3n); the generator stage sampled the same 6 in one call.
    text = POLICY.replace("{kind: STRATEGY}", "{kind: rejection, threshold: 0.99}")
    al = Aligner(parse_policy(text, "r.yaml"), input_scorers=[KeywordHarm()])
    with al:
        row = rows()[0]
        sampled = asyncio.run(sample_row(al, row, BatchOptions().request(row.messages)))
        record = asyncio.run(decide_row(al, sampled))
    assert len(sampled.pool) == 6 and record["best"] is None
    assert len(record["candidates"]) == 6
    assert record["usage"]["completion_tokens"] == sum(c.tokens for c in sampled.pool)


def test_pool_size_is_the_first_round_for_one_round_strategies() -> None:
    assert pool_size(BestOfN(), 3, 9) == 3


def test_an_invalid_request_is_settled_in_the_generator_stage() -> None:
    with aligner("best_of_n") as al:
        row = rows()[0]
        sampled = asyncio.run(
            sample_row(al, row, BatchOptions(template="nope").request(row.messages))
        )
        assert isinstance(sampled, Sampled) and sampled.record is not None
        record = asyncio.run(decide_row(al, sampled))
    assert record["error"].startswith("unknown template 'nope'") and record["candidates"] == []


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aligntime", "batch", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY.replace("STRATEGY", "best_of_n").split("input:")[0])
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"id": "a", "prompt": "Hi?"}) + "\n")
    return ["-i", str(rows), "-o", str(tmp_path / "out"), "-p", str(policy)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray", "--generator-actors", "0"], "--generator-actors must be at least 1, got 0"),
        (["--ray", "--scorer-actors", "-2"], "--scorer-actors must be at least 1, got -2"),
        (["--ray", "--actors", "0"], "--actors must be at least 1, got 0"),
        (["--ray", "--scorer-actors", "1", "--gpus-per-scorer", "-1"], "--gpus-per-scorer must"),
        (["--ray", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--generator-actors", "2"], "--generator-actors needs --ray"),
        (["--ray", "--scorer-actors", "2", "--actors", "2"], "--actors sizes the one pool"),
        (["-n", "9"], "n must be between 1 and 4 for policy 'staged', got 9"),
        (["-c", "0"], "--concurrency must be at least 1, got 0"),
        (["--max-tokens", "0"], "max_tokens must be at least 1, got 0"),
        (["--template", "nope"], "unknown template 'nope' for policy 'staged'"),
    ],
)
def test_bad_pool_sizes_and_settings_exit_2_naming_the_option(
    files: list[str], args: list[str], message: str
) -> None:
    proc = cli(*files, *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_search_strategy_is_refused_on_two_pools(files: list[str], tmp_path: Path) -> None:
    policy = Path(files[5])
    policy.write_text(policy.read_text().replace("kind: best_of_n", "kind: early_rejection"))
    proc = cli(*files, "--ray", "--generator-actors", "1", "--scorer-actors", "1")
    assert proc.returncode == 2, proc.stderr
    assert "strategy 'early_rejection' generates and scores in turns" in proc.stderr
