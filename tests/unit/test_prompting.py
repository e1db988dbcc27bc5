from __future__ import annotations

import pytest

from aligntime.errors import InputError
from aligntime.policy.schema import Demonstration, PromptSpec, Template
from aligntime.prompting.policy import PromptPolicy
from aligntime.types import Message


def make() -> PromptPolicy:
    return PromptPolicy.from_spec(
        PromptSpec(
            system="You are careful.",
            principles=["Be kind.", "Be brief."],
            demonstrations=[Demonstration(user="Hi", assistant="Hello!")],
            templates={
                "concise": Template(prompt="{prompt} (in one sentence)"),
                "pirate": Template(
                    prompt="{prompt}", system="Talk like a pirate.", demonstrations=[]
                ),
            },
        )
    )


def test_system_principles_demonstrations_then_conversation() -> None:
    out = make().apply([Message("user", "What is 2+2?")])
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert out[0].content.startswith("You are careful.")
    assert "- Be kind.\n- Be brief." in out[0].content
    assert (out[1].content, out[2].content) == ("Hi", "Hello!")
    assert out[3].content == "What is 2+2?"


def test_template_wraps_only_the_last_user_message_and_keeps_braces() -> None:
    convo = [
        Message("user", "first {x}"),
        Message("assistant", "ok"),
        Message("user", "second {prompt} {0}"),
    ]
    out = make().apply(convo, template="concise")
    assert out[-3].content == "first {x}"
    assert out[-1].content == "second {prompt} {0} (in one sentence)"


def test_template_can_replace_system_and_demonstrations() -> None:
    out = make().apply([Message("user", "Ahoy?")], template="pirate")
    assert out[0].content.startswith("Talk like a pirate.")
    assert "Be kind." in out[0].content  # principles not replaced
    assert [m.role for m in out] == ["system", "user"]


def test_callers_system_message_is_merged_after_policy_rules() -> None:
    out = make().apply([Message("system", "Use French."), Message("user", "Bonjour")])
    assert sum(m.role == "system" for m in out) == 1
    assert out[0].content.index("You are careful.") < out[0].content.index("Use French.")


def test_unknown_template_suggests() -> None:
    with pytest.raises(InputError, match="concise"):
        make().apply([Message("user", "x")], template="concis")


def test_empty_policy_passes_conversation_through() -> None:
    convo = [Message("user", "x")]
    assert PromptPolicy().apply(convo) == convo


def test_steered_prompt_adds_principles_and_forces_its_template() -> None:
    from aligntime.policy.schema import SteerSpec

    base = make()
    steered = base.steered(SteerSpec(template="concise", principles=["Refuse harm."]))
    out = steered.apply([Message("user", "Q?")], template="pirate")
    assert out[0].content == (
        "You are careful.\n\nFollow these principles:\n- Be kind.\n- Be brief.\n- Refuse harm."
    )
    assert out[-1].content == "Q? (in one sentence)"  # the steer's template, not the request's
    strict = base.steered(SteerSpec(system="Strict.")).apply([Message("user", "Q?")])
    assert strict[0].content.startswith("Strict.\n\nFollow these principles:\n- Be kind.")
    assert base.apply([Message("user", "Q?")])[0].content.startswith("You are careful.")
    with pytest.raises(InputError, match="unknown template"):
        base.steered(SteerSpec(template="nope"))
