"""Tests of the rule-based scorers and their helpers."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from aligntime.errors import ConfigError
from aligntime.scorers.rules import RefusalScorer, RulesScorer, is_refusal, repetition_ratio
from aligntime.types import Candidate, Message

GOOD = (
    "Place the egg in a pot, cover it with cold water and bring it to a boil. "
    "Then lower the heat and simmer for seven minutes."
)
MESSAGES = [Message("user", "How do I boil an egg?")]


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I’m sorry, but I can’t help with that.",  # curly apostrophes
        "I cannot assist with that request.",
        "I can't provide instructions for that.",
        "I won't help you break into a network.",
        "As an AI language model, I do not have personal opinions.",
        "I am unable to do that.",
        "I'm not able to share that information.",
        "I must decline this request.",
        "Sorry, but that is not something I can do.",
        "I apologize, but I cannot comply.",
        "Unfortunately, I cannot do that. Is there anything else?",
        "That's a dangerous question. I can't help with it.",
        "I'm sorry, I can't give a good answer to that.",
    ],
)
def test_is_refusal_detects_refusals(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "I can't stress enough how important sleep is.",
        "I'm sorry to hear that. Rest, drink fluids and see a doctor if it gets worse.",
        "Sure. Here is how it works. I can't help with the last step, though.",
        "The AI in the game is unable to pathfind.",
        "",
    ],
)
def test_is_refusal_ignores_answers(text: str) -> None:
    assert not is_refusal(text)


def test_is_refusal_reads_only_leading_sentences() -> None:
    text = "Here is a recipe. Mix flour and water. I can't help with baking times."
    assert not is_refusal(text)
    assert is_refusal(text, sentences=3)


def test_repetition_ratio() -> None:
    assert repetition_ratio("") == 0.0
    assert repetition_ratio("two words") == 0.0
    assert repetition_ratio(GOOD) == 0.0
    looped = "the cat sat on the mat " * 20
    assert repetition_ratio(looped) > 0.9
    assert repetition_ratio("a b c a b c") == pytest.approx(1 - 3 / 4)


def test_good_answer_scores_one() -> None:
    assert RulesScorer().rate(GOOD) == 1.0


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_scores_zero(text: str) -> None:
    assert RulesScorer().rate(text) == 0.0


def test_repetitive_text_scores_low() -> None:
    scorer = RulesScorer()
    assert scorer.rate("the cat sat on the mat. " * 20) == 0.0
    # Some repetition past the threshold is penalised, not zeroed.
    mild = "one two three four five six seven one two three four five six seven eight"
    assert 0.3 < repetition_ratio(mild) < 0.6
    assert 0.0 < scorer.rate(mild) < 1.0


def test_repetition_penalty_grows_with_repetition() -> None:
    scorer = RulesScorer()
    base = GOOD.split()
    values = []
    for copies in (1, 2, 3, 6):
        values.append(scorer.rate(" ".join(base * copies)))
    assert values[0] == 1.0
    assert values == sorted(values, reverse=True)
    assert values[-1] < 0.2


def test_repeated_lines_score_low() -> None:
    text = "\n".join(["Boil the egg now please."] * 6)
    assert RulesScorer().rate(text) < 0.2


def test_max_repetition_one_disables_the_check() -> None:
    scorer = RulesScorer(RulesScorer.Options(max_repetition=1.0))
    assert scorer.rate("the cat sat on the mat. " * 20) == 1.0


def test_short_text_penalised() -> None:
    assert RulesScorer().rate("Boil it.") == pytest.approx(0.2)
    assert RulesScorer(RulesScorer.Options(min_words=1)).rate("Paris.") == 1.0


def test_max_words_penalty() -> None:
    scorer = RulesScorer(RulesScorer.Options(max_words=10))
    n = len(GOOD.split())
    assert scorer.rate(GOOD) == pytest.approx(max(0.3, 10 / n))
    assert scorer.rate(GOOD) < 1.0
    assert RulesScorer(RulesScorer.Options(max_words=1000)).rate(GOOD) == 1.0


def test_garbage_text_penalised() -> None:
    assert RulesScorer().rate("#$%@! &&** ()() ### !!! ??? ~~~ 1234 5678") < 0.5


def test_block_patterns_case_insensitive() -> None:
    scorer = RulesScorer(RulesScorer.Options(block_patterns=[r"\bpassword\b", "kill all"]))
    assert scorer.rate(GOOD) == 1.0
    assert scorer.rate("Your PASSWORD is written on the router label.") == 0.0
    assert scorer.rate("They decided to Kill All the processes at once.") == 0.0


def test_bad_regex_is_config_error_naming_pattern() -> None:
    with pytest.raises(ConfigError, match=r"\[1\].*'\(unclosed'"):
        RulesScorer(RulesScorer.Options(block_patterns=["fine", "(unclosed"]))


def test_refusal_penalty_is_opt_in() -> None:
    refusal = "I'm sorry, but I can't help with that request."
    assert RulesScorer().rate(refusal) == 1.0
    penalised = RulesScorer(RulesScorer.Options(penalise_refusal=True))
    assert penalised.rate(refusal) == pytest.approx(0.1)
    assert penalised.rate(GOOD) == 1.0


def test_truncation_penalty() -> None:
    scorer = RulesScorer()
    cut = "Place the egg in a pot, cover it with cold water and then"
    assert scorer.rate(cut, "length") == pytest.approx(0.9)
    assert scorer.rate(cut, "stop") == 1.0
    assert scorer.rate(GOOD, "length") == 1.0  # ended at a sentence end anyway
    off = RulesScorer(RulesScorer.Options(penalise_truncation=False))
    assert off.rate(cut, "length") == 1.0


def test_scores_stay_in_range() -> None:
    scorer = RulesScorer(RulesScorer.Options(max_words=2, penalise_refusal=True))
    texts = ["", "x", GOOD, "I cannot help with that. " * 30, "!!!! ???? ####", "a\na\na\na"]
    for text in texts:
        for reason in ("stop", "length"):
            assert 0.0 <= scorer.rate(text, reason) <= 1.0


def test_score_sync_and_async_follow_candidates() -> None:
    scorer = RulesScorer()
    cands = [
        Candidate(text=GOOD),
        Candidate(text=""),
        Candidate(text="Place the egg in a pot and", finish_reason="length"),
    ]
    assert scorer.score_sync(MESSAGES, cands) == pytest.approx([1.0, 0.0, 0.9])
    assert asyncio.run(scorer.score(MESSAGES, cands)) == pytest.approx([1.0, 0.0, 0.9])
    assert scorer.name == "rules"
    assert RulesScorer(name="quality").name == "quality"
    assert (scorer.direction, scorer.value_range) == ("higher", (0.0, 1.0))


def test_rules_options_are_validated() -> None:
    with pytest.raises(ValidationError):
        RulesScorer.Options.model_validate({"max_repetition": 1.5})
    with pytest.raises(ValidationError):
        RulesScorer.Options.model_validate({"min_word": 3})


def test_refusal_scorer() -> None:
    scorer = RefusalScorer()
    cands = [Candidate(text="I can't help with that."), Candidate(text=GOOD)]
    assert scorer.score_sync(MESSAGES, cands) == [1.0, 0.0]
    assert scorer.name == "refusal"
    assert (scorer.direction, scorer.value_range) == ("higher", (0.0, 1.0))
    assert RefusalScorer(RefusalScorer.Options(sentences=3)).score_sync(
        MESSAGES, [Candidate(text="Hi. Well. I can't help with that.")]
    ) == [1.0]
