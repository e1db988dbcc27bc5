"""Reward-model and text-classifier scorers, token-bounded batching, and a policy end to end.

The models are tiny randomly initialised sequence classifiers built in the
tests (see ``tests/hf_tiny.py``), loaded through the real loading code.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aligntime import Aligner
from aligntime.errors import ConfigError
from aligntime.scorers.batching import run_batched, token_batches
from aligntime.scorers.reward_model import RewardModel, RewardModelOptions
from aligntime.scorers.text_classifier import TextClassifier, TextClassifierOptions
from aligntime.types import Candidate, Message
from hf_tiny import (  # noqa: F401 - fixtures
    build_classifier,
    tiny_lm,
    tiny_multi_rm,
    tiny_rm,
    tiny_toxicity,
)

REQUEST = [Message("user", "My child has a fever. What should I do?")]
ANSWERS = [
    "Keep the child hydrated and call a doctor if the fever is high.",
    "You idiot.",
    "Bake bread: mix flour, water, salt and yeast, then let it rise for an hour or two.",
]


def score(scorer: RewardModel | TextClassifier, answers: list[str]) -> list[float]:
    return asyncio.run(scorer.score(REQUEST, [Candidate(a) for a in answers]))


# --- batching ---------------------------------------------------------------------------


@given(
    st.lists(st.integers(min_value=1, max_value=300), max_size=40),
    st.integers(min_value=64, max_value=2000),
)
def test_token_batches_respect_the_bound_and_cover_every_item(
    lengths: list[int], bound: int
) -> None:
    batches = token_batches(lengths, bound)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        # Only a sequence longer than the bound may exceed it, and then on its own.
        assert width * len(batch) <= bound or len(batch) == 1


def test_run_batched_returns_results_in_the_callers_order() -> None:
    items = ["aaaa", "b", "cc", "ddddddd", "eee"]
    seen: list[list[str]] = []

    def fn(batch: list[str]) -> list[str]:
        seen.append(batch)
        return [s.upper() for s in batch]

    out = run_batched(items, [len(s) for s in items], 8, fn)
    assert out == [s.upper() for s in items]
    assert seen[0] == ["ddddddd"]  # longest first, alone: 7 * 2 > 8
    assert all(max(map(len, b)) * len(b) <= 8 for b in seen)


# --- reward model -----------------------------------------------------------------------


def test_reward_model_uses_its_own_tokenizer_and_template(tiny_rm: Path, tiny_lm: Path) -> None:  # noqa: F811
    from transformers import AutoTokenizer

    rm = RewardModel(RewardModelOptions(model=str(tiny_rm), device="cpu", threads=1))
    generator_tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm))
    assert rm.loaded.tokenizer.get_vocab() != generator_tokenizer.get_vocab()
    text, templated = rm.format(REQUEST, "Rest.")
    assert templated
    assert text == "[USER]\nMy child has a fever. What should I do?\n[ASSISTANT]\nRest.\n</s>"
    values = score(rm, ANSWERS)
    assert len(values) == 3 and len(set(values)) == 3
    assert (rm.normalise(0.0), rm.normalise(2.5), rm.normalise(9.0)) == (0.5, 0.75, 1.0)


def test_reward_values_do_not_depend_on_batching(tiny_rm: Path) -> None:  # noqa: F811
    together = RewardModel(RewardModelOptions(model=str(tiny_rm), device="cpu", threads=1))
    # A bound this small forces one sequence per forward pass.
    alone = RewardModel(
        RewardModelOptions(model=str(tiny_rm), device="cpu", threads=1, batch_tokens=64)
    )
    assert score(together, ANSWERS) == pytest.approx(score(alone, ANSWERS), abs=1e-5)
    assert score(together, [ANSWERS[1]]) == pytest.approx([score(together, ANSWERS)[1]], abs=1e-5)


def test_reward_model_without_chat_template_falls_back_to_plain_text(tmp_path: Path) -> None:
    folder = build_classifier(tmp_path / "rm-plain", labels=["reward"], template=False)
    rm = RewardModel(RewardModelOptions(model=str(folder), device="cpu", threads=1))
    text, templated = rm.format([Message("system", "s"), *REQUEST], "Rest.")
    assert not templated
    assert text == "User: My child has a fever. What should I do?\nAssistant: Rest."
    assert len(score(rm, ANSWERS[:2])) == 2


def test_multi_objective_reward_is_the_weighted_sum(tiny_multi_rm: Path) -> None:  # noqa: F811
    weights = {"helpfulness": 0.7, "correctness": 0.5, "verbosity": -0.2}
    rm = RewardModel(
        RewardModelOptions(
            model=str(tiny_multi_rm), device="cpu", threads=1, objective_weights=weights
        )
    )
    values = score(rm, ANSWERS)
    objectives = rm.objective_values(REQUEST, [Candidate(a) for a in ANSWERS])
    assert list(objectives[0]) == ["helpfulness", "correctness", "verbosity"]
    for value, named in zip(values, objectives, strict=True):
        assert value == pytest.approx(sum(weights[k] * v for k, v in named.items()), abs=1e-6)
    mean = RewardModel(RewardModelOptions(model=str(tiny_multi_rm), device="cpu", threads=1))
    for value, named in zip(score(mean, ANSWERS), objectives, strict=True):
        assert value == pytest.approx(sum(named.values()) / 3, abs=1e-6)


def test_unknown_objective_and_wrong_objective_count(tiny_multi_rm: Path) -> None:  # noqa: F811
    rm = RewardModel(
        RewardModelOptions(
            model=str(tiny_multi_rm), device="cpu", threads=1, objective_weights={"honesty": 1}
        )
    )
    with pytest.raises(ConfigError, match="'honesty'") as info:
        rm.load()
    assert info.value.hint and "helpfulness, correctness, verbosity" in info.value.hint
    renamed = RewardModel(
        RewardModelOptions(model=str(tiny_multi_rm), device="cpu", threads=1, objectives=["a", "b"])
    )
    with pytest.raises(ConfigError, match="3 outputs"):
        renamed.load()
    with pytest.raises(ValueError, match="low < high"):
        RewardModelOptions(model="x", value_range=(1, 1))


# --- text classifier --------------------------------------------------------------------


def test_text_classifier_maps_labels_to_a_weighted_probability(tiny_toxicity: Path) -> None:  # noqa: F811
    import torch

    clf = TextClassifier(
        TextClassifierOptions(
            model=str(tiny_toxicity), device="cpu", threads=1, labels={"toxic": 1.0, "insult": 0.5}
        )
    )
    values = score(clf, ANSWERS)
    probs = torch.softmax(torch.tensor(clf.logits(ANSWERS)), -1)
    expected = (probs[:, 1] + 0.5 * probs[:, 2]).tolist()
    assert values == pytest.approx(expected, abs=1e-6)
    assert clf.direction == "lower" and clf.value_range == (0.0, 1.0)
    assert clf.normalise(values[0]) == pytest.approx(1.0 - values[0])


def test_text_classifier_multi_label_uses_sigmoids(tiny_toxicity: Path) -> None:  # noqa: F811
    import torch

    clf = TextClassifier(
        TextClassifierOptions(
            model=str(tiny_toxicity),
            device="cpu",
            threads=1,
            labels={"toxic": 1.0, "insult": 1.0},
            multi_label=True,
            include_request=True,
        )
    )
    values = score(clf, ANSWERS[:2])
    texts = [f"{REQUEST[0].content}\n{a}" for a in ANSWERS[:2]]
    probs = torch.sigmoid(torch.tensor(clf.logits(texts)))
    assert values == pytest.approx((probs[:, 1] + probs[:, 2]).tolist(), abs=1e-6)
    assert clf.value_range == (0.0, 2.0)


def test_unknown_label_names_the_models_labels(tiny_toxicity: Path) -> None:  # noqa: F811
    clf = TextClassifier(
        TextClassifierOptions(
            model=str(tiny_toxicity), device="cpu", threads=1, labels={"toxicity": 1.0}
        )
    )
    with pytest.raises(ConfigError, match="no label 'toxicity'") as info:
        clf.load()
    assert info.value.hint == "its labels are: neutral, toxic, insult"


# --- a policy end to end ----------------------------------------------------------------


def test_policy_with_transformers_reward_model_and_classifier(
    tmp_path: Path,
    tiny_lm: Path,  # noqa: F811
    tiny_rm: Path,  # noqa: F811
    tiny_toxicity: Path,  # noqa: F811
) -> None:
    policy = tmp_path / "hf.yaml"
    policy.write_text(
        textwrap.dedent(
            f"""
            name: hf-tiny
            generator:
              {{backend: transformers, model: "{tiny_lm}", max_tokens: 10, seed: 0, threads: 1}}
            n: 4
            prompt: {{system: "Be helpful."}}
            scorers:
              - {{name: reward, kind: reward_model, model: "{tiny_rm}", weight: 1.0}}
              - name: toxicity
                kind: text_classifier
                model: "{tiny_toxicity}"
                labels: {{toxic: 1.0, insult: 1.0}}
                weight: 0.5
                gate: {{max: 1.0}}
            strategy: {{kind: best_of_n}}
            """
        )
    )
    aligner = Aligner.from_policy(policy)
    result = aligner.align("My child has a fever. What should I do?")
    assert len(result.candidates) == 4
    assert result.best is not None
    for c in result.candidates:
        assert set(c.scores) == {"reward", "toxicity"}
        assert 0.0 <= c.scores["toxicity"] <= 1.0
    best = result.candidates[result.best]
    assert best.score == max(c.score for c in result.candidates if c.score is not None)
    assert result.usage.completion_tokens == sum(c.tokens for c in result.candidates)
    assert result.timings.generate_s > 0 and result.timings.score_s > 0


@pytest.mark.gpu
def test_generator_and_scorer_share_one_gpu(tiny_lm: Path, tiny_rm: Path) -> None:  # noqa: F811
    import torch

    from aligntime.generators.transformers import TransformersGenerator, TransformersOptions
    from aligntime.types import GenerationParams

    gen = TransformersGenerator(TransformersOptions(model=str(tiny_lm), max_tokens=8, seed=0))
    rm = RewardModel(RewardModelOptions(model=str(tiny_rm)))
    out = asyncio.run(gen.generate(REQUEST, 4, GenerationParams()))
    values = asyncio.run(rm.score(REQUEST, out.candidates))
    assert gen.device == rm.loaded.device == "cuda"  # "auto" picks the GPU for both
    assert gen.model.dtype == torch.bfloat16 and len(values) == 4


def test_example_policy_validates() -> None:
    from aligntime.policy.loader import load_policy

    policy = load_policy(Path(__file__).parents[2] / "examples" / "reward_model.yaml")
    assert policy.generator.backend == "transformers"
    assert [s.kind for s in policy.scorers] == ["reward_model", "text_classifier"]
