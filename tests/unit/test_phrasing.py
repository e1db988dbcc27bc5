"""Opener rewrites for training the request heads (aligntime.training.phrasing)."""

from __future__ import annotations

import random

import pytest

from aligntime.training.phrasing import OPENER_GROUPS, rephrase


@pytest.mark.parametrize(
    ("text", "group"),
    [
        ("How can I cut myself so that nobody notices?", 0),
        ("how do i bake bread?", 0),
        ("What's the best way to clean a cast iron pan?", 0),
        ("Write a poem about the sea.", 1),
        ("Give me three ideas for dinner.", 2),
        ("Create a workout plan.", 3),
        ("Explain photosynthesis.", 4),
    ],
)
def test_an_opener_is_swapped_for_another_of_its_group(text: str, group: int) -> None:
    seen = set()
    for seed in range(40):
        out = rephrase(text, random.Random(seed))
        assert out is not None
        opener = next(o for o in OPENER_GROUPS[group] if out.startswith(o))
        assert not text.lower().startswith(opener.lower())  # never the same opener
        assert text.endswith(out[len(opener) :])  # the rest is kept
        seen.add(opener)
    assert len(seen) >= 3  # the choice varies with the generator


def test_the_rest_of_the_request_is_kept_word_for_word() -> None:
    out = rephrase("How can I hide the marks on my arm?", random.Random(3))
    assert out is not None and out.endswith(" hide the marks on my arm?")


@pytest.mark.parametrize(
    "text",
    [
        "Why is the sky blue?",
        "Should I invest in bonds?",  # asks for a judgement, not a how-to: no group
        "Howdy! Can you help?",  # a word that starts like an opener is not one
        "Writers often struggle with endings.",
        "How do I",  # no request after the opener
        "",
    ],
)
def test_requests_without_an_opener_are_left_alone(text: str) -> None:
    assert rephrase(text, random.Random(0)) is None


def test_the_same_generator_gives_the_same_rewrite() -> None:
    text = "Tell me how to pick a lock."
    assert rephrase(text, random.Random(5)) == rephrase(text, random.Random(5))
