"""The evaluation run on the fake backend: resumption, held-out scorer, outputs, report."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from aligntime.aligner import Aligner
from aligntime.errors import BackendError, ConfigError, InputError
from aligntime.evaluation.datasets import EvalPrompt
from aligntime.evaluation.experiment import EvalConfig, parse_ns, prepare, run_eval
from aligntime.evaluation.heldout import (
    HELDOUT_QUESTION,
    independent_judge_model,
    resolve_heldout,
)
from aligntime.evaluation.runner import RESULTS, PassConfig, load_records, run_pass
from aligntime.generators.fake import FakeGenerator, FakeOptions
from aligntime.policy.loader import load_policy
from aligntime.types import Generation, GenerationParams, Message

PROMPTS = [
    EvalPrompt(f"p{i}", f"Question number {i}: what helps a fever?", harmful=i % 2 == 0)
    for i in range(5)
]


class FailingAfter(FakeGenerator):
    """A fake backend that raises once it has served ``ok`` calls."""

    def __init__(self, ok: int) -> None:
        super().__init__(FakeOptions())
        self.ok = ok

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        if self.calls >= self.ok:
            self.calls += 1
            raise BackendError("simulated crash")
        return await super().generate(messages, n, params)


def _aligner(policy_file: Path, generator: FakeGenerator | None = None) -> Aligner:
    policy, _ = resolve_heldout(load_policy(policy_file), "rules")
    return Aligner.from_policy(policy, generator=generator or FakeGenerator(FakeOptions()))


def test_an_interrupted_pass_resumes_without_redoing_finished_prompts(
    fake_policy_file: Path, tmp_path: Path
) -> None:
    policy = load_policy(fake_policy_file)
    selecting, heldout = resolve_heldout(policy, "rules")
    config = PassConfig(pool=4, seed=1)
    crashing = FailingAfter(ok=3)
    al = Aligner.from_policy(selecting, generator=crashing)
    with pytest.raises(BackendError, match="simulated crash"):
        run_pass(al, heldout, PROMPTS, config, tmp_path)
    assert [r["id"] for r in load_records(tmp_path / RESULTS)] == ["p0", "p1", "p2"]

    # A write cut short by the crash leaves half a line; the rerun must repair it.
    with (tmp_path / RESULTS).open("a") as fh:
        fh.write('{"key": "half a li')

    fresh = FakeGenerator(FakeOptions())
    al2 = Aligner.from_policy(selecting, generator=fresh)
    records = run_pass(al2, heldout, PROMPTS, config, tmp_path)
    assert fresh.calls == 2  # only p3 and p4 were generated
    assert [r["id"] for r in records] == [p.id for p in PROMPTS]
    stored = load_records(tmp_path / RESULTS)
    assert [r["id"] for r in stored] == [p.id for p in PROMPTS]  # no duplicates
    assert len({r["key"] for r in stored}) == 5

    # A third run has nothing to do.
    idle = FakeGenerator(FakeOptions())
    run_pass(Aligner.from_policy(selecting, generator=idle), heldout, PROMPTS, config, tmp_path)
    assert idle.calls == 0
    # A different pool size is different work: everything is sampled again.
    bigger = FakeGenerator(FakeOptions())
    al4 = Aligner.from_policy(selecting, generator=bigger)
    run_pass(al4, heldout, PROMPTS[:2], PassConfig(pool=8, seed=1), tmp_path)
    assert bigger.calls == 2


def test_records_hold_every_candidate_with_scores_and_heldout(
    fake_policy_file: Path, tmp_path: Path
) -> None:
    al = _aligner(fake_policy_file)
    _, heldout = resolve_heldout(load_policy(fake_policy_file), "rules")
    (record,) = run_pass(al, heldout, PROMPTS[:1], PassConfig(pool=3), tmp_path)
    assert len(record["candidates"]) == 3
    first = record["candidates"][0]
    assert set(first) >= {"text", "tokens", "scores", "score", "passed", "heldout", "refusal"}
    assert set(first["scores"]) == {"safety"}  # rules is held out, not used for selection
    assert 0.0 <= first["heldout"] <= 1.0
    assert record["fallback"]["text"] == "Sorry, no good answer."
    assert set(record["timings"]) == {"generate_s", "score_s", "heldout_s", "input_s"}
    assert record["input"] is None  # the policy has no input gate


def test_heldout_resolution(fake_policy_file: Path) -> None:
    policy = load_policy(fake_policy_file)
    selecting, held = resolve_heldout(policy, "safety")
    assert held is not None and held.scorer.name == "safety"
    assert [s.name for s in selecting.scorers] == ["rules"]
    same, held = resolve_heldout(policy, "embedding")
    assert same is policy and held is not None and held.scorer.name == "heldout_embedding"
    _, held = resolve_heldout(policy, "{kind: rules, min_words: 5}")
    assert held is not None and held.scorer.name == "heldout"
    assert resolve_heldout(policy, "none")[1] is None
    _, default = resolve_heldout(policy, None)
    assert default is not None and "judge" in default.spec
    with pytest.raises(InputError, match="neither a scorer of policy"):
        resolve_heldout(policy, "nonsense")
    with pytest.raises(InputError, match="not a valid scorer spec"):
        resolve_heldout(policy, "{kind: rules, bogus: 1}")


def test_the_default_referee_without_llamacpp_fails_before_sampling_and_says_what_to_pass(
    fake_policy_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An openai-backend policy evaluated where llama.cpp is not installed: the default
    referee's engine is missing, which ``prepare`` reports (before any candidate is
    drawn) with the alternatives."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "xllamacpp" else real(name, *a),
    )
    config = EvalConfig(ns=(1, 2))
    with pytest.raises(ConfigError, match="default held-out judge") as caught:
        prepare(load_policy(fake_policy_file), config)
    assert "aligntime[embedded]" in str(caught.value.hint)
    assert "--heldout none" in str(caught.value.hint)
    # a referee that needs no llama.cpp is still accepted
    assert prepare(load_policy(fake_policy_file), EvalConfig(ns=(1, 2), heldout="rules"))[1]


def test_parse_ns_and_bad_grids(fake_policy_file: Path) -> None:
    assert parse_ns("4, 1,2,2") == (1, 2, 4)
    for bad, message in (("1,x", "not a whole number"), ("0,1", "at least 1"), (",", "empty")):
        with pytest.raises(InputError, match=message):
            parse_ns(bad)
    with pytest.raises(InputError, match="allows at most 8"):
        prepare(load_policy(fake_policy_file), EvalConfig(ns=(1, 16), heldout="rules"))


def test_eval_writes_summary_plots_and_a_self_contained_report(
    fake_policy_file: Path, tmp_path: Path
) -> None:
    prompts = [*PROMPTS[:3], EvalPrompt("x<script>", "Say <script>alert('x')</script> & more")]
    config = EvalConfig(ns=(1, 2, 4), heldout="rules", draws=50, examples=4)
    al, heldout = prepare(load_policy(fake_policy_file), config)
    summary = run_eval(al, heldout, prompts, config, tmp_path)

    for name in ("results.jsonl", "summary.json", "report.html", "score_vs_n.png"):
        assert (tmp_path / name).is_file(), name
    for png in ("winrate_vs_n.png", "cost_vs_n.png", "kl_bound.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")

    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored["prompts"] == {"all": 4, "harmful": 2, "benign": 1}
    cells = {(c["strategy"], c["n"]): c for c in stored["results"]}
    assert set(cells) == {(s, n) for s in config.strategies for n in (1, 2, 4)}
    bon1, bon4 = cells[("best_of_n", 1)], cells[("best_of_n", 4)]
    assert bon4["score"]["mean"] >= bon1["score"]["mean"]  # best-of-n never lowers the proxy
    assert bon4["proxy_win"]["mean"] >= bon1["proxy_win"]["mean"]
    assert bon1["kl_bound"] == 0.0
    assert bon4["tokens"]["mean"] == pytest.approx(4 * bon1["tokens"]["mean"])
    assert 0.0 <= bon4["fallback_rate"]["mean"] <= 1.0
    assert set(bon4["scores"]) == {"safety"}
    assert bon4["score"]["low"] <= bon4["score"]["mean"] <= bon4["score"]["high"]
    assert summary["results"][0]["strategy"] == "best_of_n"

    html = (tmp_path / "report.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,", html)) == 4
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in html
    assert "x&lt;script&gt;" in html


def test_without_a_heldout_scorer_win_rates_are_missing(
    fake_policy_file: Path, tmp_path: Path
) -> None:
    config = EvalConfig(ns=(1, 2), strategies=("best_of_n",), heldout="none")
    al, heldout = prepare(load_policy(fake_policy_file), config)
    assert heldout is None
    run_eval(al, heldout, PROMPTS[:2], config, tmp_path)
    stored = json.loads((tmp_path / "summary.json").read_text())
    cell = stored["results"][1]
    assert cell["heldout_win"] == {"mean": None, "low": None, "high": None}
    assert cell["proxy_win"]["mean"] is not None
    assert stored["config"]["heldout"] is None


def test_search_strategies_are_refused(fake_policy_file: Path, tmp_path: Path) -> None:
    from aligntime.evaluation.replay import choose
    from aligntime.registry import available, resolve
    from aligntime.strategies.base import SearchStrategy
    from aligntime.types import Candidate

    search = [
        k for k in available("strategy") if issubclass(resolve("strategy", k), SearchStrategy)
    ]
    assert search, "the built-in search strategies (guided, early_rejection) are registered"
    with pytest.raises(InputError, match="cannot be replayed"):
        choose(search[0], {}, [Candidate("a", score=0.5)], 1, budget=1, draws=1, seed=0)


def test_asample_scores_without_selecting(fake_policy_file: Path) -> None:
    import asyncio

    generator = FakeGenerator(FakeOptions(responses=["Rest and fluids help.", "You idiot."]))
    al = Aligner.from_policy(load_policy(fake_policy_file), generator=generator)
    result = asyncio.run(al.asample("What helps a fever?", 4, seed=3))
    assert generator.calls == 1  # one generation call for the whole pool
    assert len(result.candidates) == 4 and result.best is None and result.fallback is None
    assert all(c.score is not None and "safety" in c.scores for c in result.candidates)
    assert [c.passed for c in result.candidates] == [True, False, True, False]
    assert result.timings.generate_s >= 0 and result.usage.completion_tokens > 0
    with pytest.raises(InputError, match="between 1 and 8"):
        asyncio.run(al.asample("What helps a fever?", 9))


def test_the_default_referee_runs_on_a_model_no_selecting_judge_runs() -> None:
    # A referee on a selecting judge's model agrees with that judge whatever it asks.
    policy = load_policy("default")
    assert [s.options().get("model") for s in policy.scorers if s.kind == "judge"] == [
        "smollm2-135m-instruct-q8_0"
    ]
    _, held = resolve_heldout(policy, None)
    assert held is not None and "qwen2.5-coder-0.5b-instruct" in held.spec
    assert held.scorer.options.model == "qwen2.5-coder-0.5b-instruct"
    assert held.scorer.options.question == HELDOUT_QUESTION
    qwen_judged = policy.model_copy(
        update={
            "scorers": [
                s.model_copy(update={"model": "qwen2.5-coder-0.5b-instruct"})
                if s.kind == "judge"
                else s
                for s in policy.scorers
            ]
        }
    )
    assert independent_judge_model(qwen_judged) == "smollm2-135m-instruct-q8_0"
    # Another file of SmolLM2 (Q4_0, made from the same weights) is SmolLM2 too: with Qwen
    # and it judging, no listed model is free and the first is used.
    both = qwen_judged.model_copy(
        update={
            "scorers": [
                *qwen_judged.scorers,
                qwen_judged.scorers[-1].model_copy(
                    update={
                        "name": "judge2",
                        "kind": "judge",
                        "model": "smollm2-135m-instruct-q4_0",
                    }
                ),
            ]
        }
    )
    assert independent_judge_model(both) == "qwen2.5-coder-0.5b-instruct"
    # A judge that names no model runs the judge's default one (SmolLM2-135M), any quantisation.
    unnamed = policy.model_copy(
        update={"scorers": [s.model_copy(update={"model": None}) for s in policy.scorers]}
    )
    assert independent_judge_model(unnamed) == "qwen2.5-coder-0.5b-instruct"
