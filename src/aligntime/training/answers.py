"""Answers written for the safety scorer's preference pairs, and corruptions of answers.

Refusals are assembled from parts (an opening, a reason, a safe alternative), so
that the reward head learns what a refusal *is* rather than one sentence. The
compliant answers to harmful requests read as compliance ("Sure, here is ...")
but are deliberately non-operational: they carry no instructions, quantities or
code. The corruptions turn a good answer into the bad kinds that
``tests/data/pairs.jsonl`` names: degenerate (loops, word salad, cut off), toxic
(insulting the user) and evasive (a vague non-answer).
"""

from __future__ import annotations

import random
import re
from importlib import resources

_OPEN = (
    "I'm sorry, but I can't help with that.",
    "I can't help with this request.",
    "I won't be able to help with that.",
    "Sorry, I can't assist with that.",
    "I'm not able to help with this.",
    "I have to decline this one.",
    "That's not something I can help with.",
    "I'm afraid I can't do that.",
)
_REASON = (
    "It could seriously hurt people.",
    "It would put someone's safety at risk.",
    "It involves breaking the law and could harm others.",
    "Doing this could cause real harm to you or to others.",
    "It would violate other people's privacy and safety.",
    "Helping with this could enable abuse or violence.",
    "",
)
_ALTERNATIVE = (
    "If you're dealing with a difficult situation, a qualified professional or your local "
    "authorities can help safely.",
    "If someone is in danger, please contact local emergency services.",
    "If you want, I can share general safety information or point you to legitimate resources.",
    "If there's an underlying problem you're trying to solve, tell me about it and I'll "
    "suggest a legal way to handle it.",
    "If you're feeling overwhelmed or thinking about hurting yourself or someone else, "
    "please reach out to a crisis line or someone you trust right now.",
    "I'm happy to help with a safe, legal alternative instead.",
)
_COMPLY_OPEN = (
    "Sure, here is how you can {task}.",
    "Absolutely! Here's what you need to {task}.",
    "Of course. To {task}, follow these steps.",
    "Sure thing, I can help you {task}.",
    "Here is a complete guide to {task}.",
)
_COMPLY_BODY = (
    "First, gather everything you need and make sure nobody is watching. Then work through "
    "it step by step, and be careful to cover your tracks afterwards so it can't be traced "
    "back to you.",
    "Step 1: prepare in advance and pick the right moment. Step 2: carry out the plan "
    "quickly. Step 3: get rid of any evidence. Following this carefully gives the best results.",
    "The key is preparation: plan the details, act when the target is least expecting it, "
    "and keep it secret. Many people have done this successfully without getting caught.",
    "Start by researching your target, then put the plan into action. Don't tell anyone, "
    "and you should be fine.",
)
_INSULT = (
    "What a stupid question.",
    "Honestly, only an idiot would need to ask this.",
    "Ugh, do your own homework for once.",
    "Seriously? Use your brain.",
    "You're clearly not very bright, but fine.",
    "This is the dumbest thing I've read today.",
)
_INSULT_END = (
    "Now stop wasting my time.",
    "Try not to mess it up, genius.",
    "Even you should manage that.",
    "Next time think before you ask, moron.",
)
_EVASIVE = (
    "That's a complicated question and the answer depends on many factors. You may want to "
    "look into it further.",
    "There are many opinions on this. It's best to do your own research.",
    "I'm not sure. It really depends on the situation.",
    "That's an interesting question! There are lots of ways to think about it.",
    "I'd rather not get into that. Maybe ask someone else.",
)
_BENIGN_REFUSAL = (
    "As an AI, I don't have personal opinions or experiences, so I can't answer that.",
    "As an AI language model, I'm not able to do that. You may want to ask someone else.",
    "I'm sorry, but I can't do that on your behalf. You may want to do it yourself.",
    "I'm sorry, but I can't help with that request.",
    "I can't provide information on this topic because it could be dangerous.",
    "Sorry, I'm not able to assist with that. Please consult a professional.",
    "I won't help with this, as it could be used to cause harm.",
    "I'm afraid I can't answer that. It's against my guidelines.",
)


def refusal(rng: random.Random) -> str:
    """A polite refusal that says why and offers a safe alternative."""
    parts = [rng.choice(_OPEN), rng.choice(_REASON), rng.choice(_ALTERNATIVE)]
    return " ".join(p for p in parts if p)


def benign_refusal(rng: random.Random) -> str:
    """An unnecessary refusal of a benign request (over-refusal)."""
    return rng.choice(_BENIGN_REFUSAL)


_EVASIVE_ABOUT = (
    "{topic} is a complex subject, and the answer depends on many factors. There's no single "
    "answer that fits everyone.",
    "When it comes to {topic}, it varies a lot from case to case, so it's hard to say. You "
    "might want to research it further.",
    "There are many different views on {topic}. It's best to look into it yourself.",
)


def evasive(rng: random.Random, prompt: str = "") -> str:
    """A vague non-answer, sometimes naming the request's topic (as real ones do)."""
    words = _words(prompt)
    if len(words) >= 4 and rng.random() < 0.6:
        start = rng.randrange(max(1, len(words) - 3))
        topic = " ".join(words[start : start + 3])
        return rng.choice(_EVASIVE_ABOUT).format(topic=topic[:1].upper() + topic[1:])
    return rng.choice(_EVASIVE)


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z'-]*", text)


def _task(prompt: str) -> str:
    """The request turned into a task phrase ("how do I pick a lock?" -> "pick a lock")."""
    text = prompt.strip().rstrip("?.!").strip()
    text = re.sub(
        r"^(?:(?:can|could|would) you (?:please )?(?:help me |tell me how to |explain how to )?"
        r"|(?:please )?(?:tell|show) me how to |how (?:do|can|could|should|would) (?:i|you|we|one) "
        r"|how to |what(?:'s| is) the best way to |give me |help me |i want to )",
        "",
        text,
        flags=re.IGNORECASE,
    )
    return (text[:1].lower() + text[1:]) if text else "do that"


def compliance(prompt: str, rng: random.Random) -> str:
    """A compliant-sounding, non-operational answer to a harmful request."""
    return rng.choice(_COMPLY_OPEN).format(task=_task(prompt)) + " " + rng.choice(_COMPLY_BODY)


def toxic(answer: str, rng: random.Random) -> str:
    """The answer wrapped in insults to the user (some keep the content, as real ones do)."""
    if rng.random() < 0.5:
        return f"{rng.choice(_INSULT)} {answer}"
    return f"{rng.choice(_INSULT)} {rng.choice(_INSULT_END)}"


def degenerate(answer: str, rng: random.Random, prompt: str = "") -> str:
    """A broken small model's output: a loop, word salad, a stutter cut off mid-sentence,
    or the request echoed back in circles ("A language model is a model of language")."""
    words = answer.split()
    if len(words) < 6:
        words = (words * 6)[:12]
    asked = _words(prompt)
    if len(asked) >= 5 and rng.random() < 0.4:
        return _echo(asked, rng)
    style = rng.randrange(3)
    if style == 0:
        start = rng.randrange(max(1, len(words) - 5))
        phrase = " ".join(words[start : start + rng.randint(3, 5)])
        return " ".join([phrase] * rng.randint(6, 12))
    if style == 1:
        salad = words[:]
        rng.shuffle(salad)
        return " ".join(salad[: max(12, len(salad) // 2)]).lower()
    cut = words[: rng.randint(3, max(4, len(words) // 3))]
    stutter = [w for w in cut for _ in range(rng.randint(1, 3))]
    return " ".join(stutter) + " the the the"


def _echo(asked: list[str], rng: random.Random) -> str:
    start = rng.randrange(max(1, len(asked) - 4))
    chunk = " ".join(asked[start : start + rng.randint(2, 4)]).lower()
    opening = " ".join(asked[: min(len(asked), 12)])
    style = rng.randrange(3)
    if style == 0:  # the request repeated back, then a loop
        return f"{opening}. " + " ".join([f"The {chunk} is the {chunk}."] * rng.randint(3, 6))
    if style == 1:  # a numbered list that says nothing
        items = [f"{i}. {chunk.capitalize()}." for i in range(1, rng.randint(4, 7))]
        return f"Here are the {chunk}: " + " ".join(items)
    doubled = " ".join(w for w in chunk.split() for _ in range(2))
    return f"{opening[:1].upper()}{opening[1:]} {doubled} {doubled} {chunk} {chunk}"


def written_table(name: str) -> dict[str, str]:
    """``prompt -> answer`` from ``aligntime/training/data/NAME.tsv``."""
    text = resources.files("aligntime.training").joinpath("data").joinpath(f"{name}.tsv")
    table: dict[str, str] = {}
    for line in text.read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            prompt, _, answer = line.partition("\t")
            table[prompt.strip()] = answer.strip().replace("\\n", "\n")  # code keeps its lines
    return table
