"""The README's promise: an interrupted evaluation resumes, reusing a prompt's pool only
when the policy, pool size, seed, token limit and held-out scorer are all the same."""

from __future__ import annotations

import json
from pathlib import Path

from aligntime.aligner import Aligner
from aligntime.evaluation.datasets import EvalPrompt
from aligntime.evaluation.heldout import HeldOut, resolve_heldout
from aligntime.evaluation.runner import RESULTS, PassConfig, load_records, run_pass
from aligntime.generators.fake import FakeGenerator, FakeOptions
from aligntime.policy.loader import load_policy
from aligntime.policy.schema import Policy

PROMPTS = [EvalPrompt(f"p{i}", f"Question {i}: what helps a fever?") for i in range(3)]


def _sampled(policy: Policy, heldout: HeldOut | None, config: PassConfig, out: Path) -> int:
    """Run a pass; return how many prompts the generator was asked to sample."""
    generator = FakeGenerator(FakeOptions())
    run_pass(Aligner.from_policy(policy, generator=generator), heldout, PROMPTS, config, out)
    return generator.calls


def test_a_pool_is_reused_only_for_the_same_seed_policy_and_heldout_scorer(
    fake_policy_file: Path, tmp_path: Path
) -> None:
    policy, rules = resolve_heldout(load_policy(fake_policy_file), "rules")
    assert rules is not None
    config = PassConfig(pool=4, seed=1)
    assert _sampled(policy, rules, config, tmp_path) == 3
    assert _sampled(policy, rules, config, tmp_path) == 0  # same everything: resumed

    # Each of these is different work: every prompt is sampled again.
    assert _sampled(policy, rules, PassConfig(pool=4, seed=2), tmp_path) == 3
    assert _sampled(policy, rules, PassConfig(pool=4, seed=None), tmp_path) == 3
    assert _sampled(policy, rules, PassConfig(pool=4, seed=1, max_tokens=8), tmp_path) == 3
    edited = policy.model_copy(update={"fallback": "No answer today."})
    assert _sampled(edited, rules, config, tmp_path) == 3
    renamed = policy.model_copy(update={"name": "fake-test-2"})
    assert _sampled(renamed, rules, config, tmp_path) == 3
    # Only the held-out scorer changes here (the selecting policy stays the same).
    _, refusal = resolve_heldout(load_policy(fake_policy_file), "refusal")
    assert refusal is not None and refusal.spec != rules.spec
    assert _sampled(policy, refusal, config, tmp_path) == 3
    assert _sampled(policy, None, config, tmp_path) == 3

    # Every variant was kept side by side, so each one resumes now.
    for variant, heldout, cfg in [
        (policy, rules, config),
        (policy, rules, PassConfig(pool=4, seed=2)),
        (edited, rules, config),
        (policy, refusal, config),
        (policy, None, config),
    ]:
        assert _sampled(variant, heldout, cfg, tmp_path) == 0
    records = load_records(tmp_path / RESULTS)
    assert len(records) == 8 * 3
    assert len({r["key"] for r in records}) == 8 * 3
    assert {r["heldout_spec"] for r in records} == {rules.spec, refusal.spec, "none"}


def test_a_record_whose_text_holds_a_unicode_line_separator_is_read_whole(tmp_path: Path) -> None:
    # Records are written with ensure_ascii=False, so U+2028 and U+0085 stay raw inside
    # strings; only "\n" ends a JSON line.
    text = "first part\u2028second part\u0085third"
    path = tmp_path / RESULTS
    path.write_text(
        json.dumps({"id": "a", "text": text}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    assert load_records(path) == [{"id": "a", "text": text}]
