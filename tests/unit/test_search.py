"""Search strategies (adaptive, early_rejection, guided) through the real Aligner."""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from aligntime import Aligner
from aligntime.errors import ConfigError
from aligntime.generators.base import Capabilities, Generator
from aligntime.generators.fake import FakeGenerator
from aligntime.policy.loader import load_policy
from aligntime.strategies.adaptive import Adaptive
from aligntime.strategies.base import REJECTED, RoundState
from aligntime.types import Candidate, Generation, GenerationParams, Message, Usage

GOOD = (
    "Give the child plenty of fluids and rest, and call a doctor if the fever "
    "passes 39 degrees or lasts more than three days."
)
GOOD_TOO = "Keep them cool and hydrated, and see a doctor if the fever stays high."
LOOP = " ".join(["the"] * 40)
RUDE = "You idiot, figure it out yourself, damn it, stop asking stupid questions, idiot."


def _policy(
    tmp_path: Path,
    responses: Sequence[str],
    strategy: str,
    n: int = 4,
    rules: str = "",
) -> Path:
    listed = "\n".join(f"    - {r!r}" for r in responses)
    text = f"""
name: search-test
generator:
  backend: fake
  max_tokens: 64
  responses:
{listed}
n: {n}
max_n: 16
scorers:
  - {{name: safety, kind: classifier, gate: {{max: 0.6}}}}
  - {{name: rules, kind: rules{rules}}}
strategy: {strategy}
fallback: "Sorry, no good answer."
"""
    path = tmp_path / "search.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _scored(*values: float, tokens: int = 10) -> list[Candidate]:
    return [Candidate(text=f"a{i}", tokens=tokens, score=v) for i, v in enumerate(values)]


# --- adaptive --------------------------------------------------------------------------


def test_adaptive_stops_at_the_first_good_candidate(tmp_path: Path) -> None:
    al = Aligner.from_policy(_policy(tmp_path, [GOOD, LOOP], "{kind: adaptive, threshold: 0.6}"))
    res = al.align("My child has a fever.", n=8)
    assert len(res.candidates) == 1
    assert res.text == GOOD
    assert res.usage.completion_tokens == res.candidates[0].tokens


def test_adaptive_grows_the_pool_geometrically_up_to_n(tmp_path: Path) -> None:
    # Nothing reaches the threshold: rounds of 1, 1, 2, 4 fill N = 8, then best-of-8.
    al = Aligner.from_policy(
        _policy(tmp_path, [LOOP, GOOD_TOO, LOOP, LOOP], "{kind: adaptive, threshold: 1.0}")
    )
    assert isinstance(al.generator, FakeGenerator)
    res = al.align("My child has a fever.", n=8)
    assert len(res.candidates) == 8
    assert al.generator.calls == 4
    assert res.text == GOOD_TOO


def test_adaptive_budgets_in_tokens_and_time() -> None:
    tokens = Adaptive(Adaptive.Options(threshold=0.9, max_total_tokens=30))
    below = _scored(0.1, 0.2, tokens=10)
    d = tokens.decide(below, RoundState(requested=16, budget=14))
    assert d.more == 1  # room for one more 10-token answer within 30
    spent = tokens.decide(_scored(0.1, 0.5, 0.2, tokens=10), RoundState(16, 13))
    assert spent.more == 0 and spent.best == 1 and "tokens" in spent.reason

    timed = Adaptive(Adaptive.Options(threshold=0.9, max_seconds=1.0))
    assert timed.decide(below, RoundState(16, 14, elapsed_s=0.5)).more == 2
    late = timed.decide(below, RoundState(16, 14, elapsed_s=1.5))
    assert late.more == 0 and late.best == 1 and "time" in late.reason


def test_adaptive_with_nothing_passing_gives_the_fallback(tmp_path: Path) -> None:
    al = Aligner.from_policy(_policy(tmp_path, [RUDE], "{kind: adaptive, first: 2}"))
    res = al.align("My child has a fever.", n=4)
    assert len(res.candidates) == 4
    assert res.best is None and res.fallback == "Sorry, no good answer."


# --- early rejection -------------------------------------------------------------------


def test_early_rejection_drops_weak_partials_and_saves_tokens(tmp_path: Path) -> None:
    strategy = "{kind: early_rejection, chunk_tokens: 6, keep: 0.5}"
    al = Aligner.from_policy(_policy(tmp_path, [LOOP, GOOD, LOOP, LOOP], strategy))
    res = al.align("My child has a fever.", n=4)
    rejected = [c for c in res.candidates if c.state == REJECTED]
    complete = [c for c in res.candidates if c.state != REJECTED]
    assert len(rejected) == 3 and len(complete) == 1
    assert all(c.text.split() == LOOP.split()[: c.tokens] for c in rejected)
    assert res.text == GOOD
    # 4 x 6 tokens, then 2 x 6 after the first check, then GOOD to its end
    assert res.usage.completion_tokens == 4 * 6 + 2 * 6 + (len(GOOD.split()) - 12)
    assert res.usage.completion_tokens < len(GOOD.split()) + 3 * 40


def test_a_rejected_draft_keeps_the_backends_finish_reason_and_says_rejected(
    tmp_path: Path,
) -> None:
    from aligntime.server.responses import candidate_out

    strategy = "{kind: early_rejection, chunk_tokens: 6, keep: 0.5}"
    al = Aligner.from_policy(_policy(tmp_path, [LOOP, GOOD, LOOP, LOOP], strategy))
    res = al.align("My child has a fever.", n=4)
    rejected = [c for c in res.candidates if c.state == REJECTED]
    # Cut at the chunk's token limit: the backend said "length"; the search said rejected.
    assert rejected and {c.finish_reason for c in rejected} == {"length"}
    assert res.candidates[res.best or 0].state == "complete"
    shown = [candidate_out(c, False).model_dump() for c in rejected]
    assert {(c["finish_reason"], c["state"]) for c in shown} == {("length", "rejected")}
    assert {c.to_record()["state"] for c in rejected} == {"rejected"}


def test_early_rejection_finishes_answers_that_end_early(tmp_path: Path) -> None:
    short = "Rest and drink water."
    strategy = "{kind: early_rejection, chunk_tokens: 8, keep: 0.5, max_checks: 1}"
    al = Aligner.from_policy(_policy(tmp_path, [short, GOOD, LOOP, GOOD_TOO], strategy))
    res = al.align("My child has a fever.", n=4)
    texts = {c.text for c in res.candidates if c.state != REJECTED}
    assert short in texts  # finished inside the first chunk, never pruned
    assert GOOD in texts or GOOD_TOO in texts
    assert res.best is not None and res.candidates[res.best].state != REJECTED


def test_early_rejection_never_picks_a_rejected_candidate(tmp_path: Path) -> None:
    # Every partial fails the safety gate; the survivor is finished and falls back.
    al = Aligner.from_policy(_policy(tmp_path, [RUDE], "{kind: early_rejection, chunk_tokens: 3}"))
    res = al.align("My child has a fever.", n=4)
    assert res.best is None and res.fallback is not None


# --- guided ----------------------------------------------------------------------------


def test_guided_blockwise_follows_the_scorers(tmp_path: Path) -> None:
    strategy = "{kind: guided, block_tokens: 5, top_k: 3, weight: 5.0}"
    al = Aligner.from_policy(_policy(tmp_path, [LOOP, RUDE, GOOD], strategy))
    res = al.align("My child has a fever.")
    assert len(res.candidates) == 1
    assert res.text == GOOD
    assert res.candidates[0].finish_reason == "stop"


class WordTrie(Generator):
    """Proposes next words from a few answers, each word's probability fixed by answer."""

    name = "trie"
    capabilities = Capabilities(logprobs=True, token_steps=True)

    def __init__(self, answers: dict[str, float]) -> None:
        self.answers = {tuple(a.split()): lp for a, lp in answers.items()}
        self.steps = 0

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        raise AssertionError("token-level guidance only asks for next tokens")

    async def next_token_logprobs(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        self.steps += 1
        done = tuple(messages[-1].content.split()) if messages[-1].role == "assistant" else ()
        out: dict[str, float] = {}
        for words, lp in self.answers.items():
            if words[: len(done)] == done:
                token = "" if len(words) == len(done) else (" " if done else "") + words[len(done)]
                out[token] = max(out.get(token, float("-inf")), lp)
        return out

    async def extend(
        self,
        messages: Sequence[Message],
        prefixes: Sequence[str],
        max_tokens: int,
        params: GenerationParams,
    ) -> Generation:
        raise AssertionError("token-level guidance does not extend blocks")


def test_guided_token_level_trades_likelihood_for_score(tmp_path: Path) -> None:
    # The model prefers the looping answer; a rule the scorers apply from the first
    # token on (token-level guidance is myopic: it sees only the prefix) rejects it.
    trie = WordTrie({LOOP: -0.1, GOOD_TOO: -0.6})
    strategy = "{kind: guided, block_tokens: 1, weight: 10}"
    policy = load_policy(_policy(tmp_path, [GOOD], strategy, rules=", block_patterns: ['^the']"))
    res = Aligner(policy, generator=trie).align("My child has a fever.")
    assert res.text == GOOD_TOO
    assert trie.steps == len(GOOD_TOO.split()) + 1  # one step per word, one for the end

    greedy = load_policy(_policy(tmp_path, [GOOD], "{kind: guided, block_tokens: 1, weight: 0}"))
    res = Aligner(greedy, generator=WordTrie({LOOP: -0.1, GOOD_TOO: -1.0})).align("fever?")
    assert res.text.startswith("the the")


class PlainGenerator(Generator):
    name = "plain"

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        return Generation([Candidate(text=GOOD)] * n, Usage())


@pytest.mark.parametrize("kind", ["early_rejection", "guided"])
def test_search_needs_a_backend_that_continues_answers(tmp_path: Path, kind: str) -> None:
    policy = load_policy(_policy(tmp_path, [GOOD], f"{{kind: {kind}}}"))
    with pytest.raises(ConfigError, match="continues partial answers"):
        Aligner(policy, generator=PlainGenerator()).align("fever?")


def test_search_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keep"):
        Aligner.from_policy(_policy(tmp_path, [GOOD], "{kind: early_rejection, keep: 2}"))
    with pytest.raises(ConfigError, match="block_size"):
        Aligner.from_policy(_policy(tmp_path, [GOOD], "{kind: guided, block_size: 4}"))


def test_search_bench_runs_and_reports_every_strategy(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_search", Path(__file__).parents[2] / "bench" / "search.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("My child has a fever.\nHow do I brew tea?\n")
    policy = _policy(tmp_path, [LOOP, GOOD, RUDE, GOOD_TOO], "{kind: best_of_n}")
    out = bench.main(["--policy", str(policy), "--prompts", str(prompts), "--n", "4"])
    assert out["n_prompts"] == 2
    names = set(out["strategies"])
    assert {"best_of_n", "adaptive", "guided"} <= names
    assert sum(name.startswith("early_rejection") for name in names) == 3
    reference = out["strategies"]["best_of_n"]
    assert reference["mean_tokens"] > 0 and 0.0 < reference["mean_score"] <= 1.0
    curve = out["best_of_smaller_n"]
    assert set(curve) == {"best_of_1", "best_of_2"}
    assert curve["best_of_1"]["mean_tokens"] < curve["best_of_2"]["mean_tokens"]
    assert curve["best_of_1"]["mean_score"] <= curve["best_of_2"]["mean_score"]
    assert curve["best_of_2"]["mean_score"] <= reference["mean_score"]
    headline = out["headline"]
    assert headline["best_of_n_mean_score"] == reference["mean_score"]
    target, reference_tokens = reference["mean_score"], reference["mean_tokens"]
    er = {k: v for k, v in out["strategies"].items() if k.startswith("early_rejection")}
    for key, settings in (("early_rejection", er), ("adaptive", out["adaptive_replay"])):
        head = headline[key]
        reaching = {k: v for k, v in settings.items() if v["mean_score"] >= target}
        # "reached" says whether any setting matched best-of-N's mean score...
        assert head["reached"] is bool(reaching), (key, head)
        if reaching:
            # ...and names the cheapest one that did, with its tokens against best-of-N's.
            chosen = settings[head["setting"]]
            assert chosen["mean_score"] >= target
            assert chosen["mean_tokens"] == min(v["mean_tokens"] for v in reaching.values())
            assert head["tokens_ratio"] == round(chosen["mean_tokens"] / reference_tokens, 3)
        else:
            # ...or the setting that came closest, and no ratio.
            assert head["tokens_ratio"] is None
            closest = settings[head["closest"]]["mean_score"]
            assert closest == max(v["mean_score"] for v in settings.values()) < target
