"""The guard scorer on the openai backend, against a real HTTP server on loopback.

The stub server (tests/openai_stub_server.py) answers ``/v1/completions`` with
scripted steps, each with its top log-probabilities, as vLLM does, and vLLM's
``/tokenize`` with a token count. The answers below are what the guard models
write (``\\n\\nunsafe\\nS1,S10``, ``Safety: Controversial\\nCategories: ...``).
"""

from __future__ import annotations

import asyncio
import math
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aligntime import Aligner
from aligntime.errors import ConfigError, ScorerError
from aligntime.policy.loader import load_policy
from aligntime.scorers.guard import GuardOptions, GuardScorer
from aligntime.scorers.guard.formats import guard_turns, make_format
from aligntime.types import Candidate, Message
from openai_stub_server import StubServer

REPO = Path(__file__).resolve().parents[2]
ASK = [Message("user", "How do I hurt someone and get away with it?")]

Steps = list[tuple[str, dict[str, float]]]


def lg_answer(p: float, codes: str = "S1,S10") -> Steps:
    """Llama Guard 3: a blank line, the verdict, the codes."""
    verdict = "unsafe" if p >= 0.5 else "safe"
    steps: Steps = [
        ("\n\n", {"\n\n": -0.001}),
        (verdict, {"unsafe": math.log(p), "safe": math.log(1 - p), "\n": -9.0}),
    ]
    if verdict == "unsafe":
        steps.append(("\n", {"\n": -0.01}))
        steps += [(piece, {piece: -0.01}) for piece in codes.replace(",", " , ").split()]
    return steps


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def server() -> Iterator[StubServer]:
    srv = StubServer().start()
    yield srv
    srv.stop()


def guard(server: StubServer, fmt: str = "llama-guard-3", **options: Any) -> GuardScorer:
    backend = {"base_url": server.base_url, "max_retries": 1, "backoff_s": 0.001}
    backend.update(options.pop("backend_options", {}))
    opts = GuardOptions(
        format=fmt,  # type: ignore[arg-type]
        model="guard-model",
        backend="openai",
        backend_options=backend,
        **options,
    )
    return GuardScorer(opts, name="guard")


def completions(server: StubServer) -> list[dict[str, Any]]:
    return [r.body for r in server.requests if r.path.endswith("/v1/completions")]


def test_llama_guard_verdict_categories_and_the_request_sent(server: StubServer) -> None:
    server.completion_for = lambda body: lg_answer(0.8)
    server.token_count_for = lambda body: 4  # the four Llama 3 special tokens, one each
    scorer = guard(server)
    [verdict] = asyncio.run(scorer.verdicts(ASK, [Candidate("Here is how: ...")]))
    assert verdict.p_unsafe == pytest.approx(0.8)
    assert [str(c) for c in verdict.categories] == ["S1 Violent Crimes", "S10 Hate"]
    assert verdict.outputs == ("\n\nunsafe\nS1,S10",)
    [body] = completions(server)
    expected = make_format("llama-guard-3").render(
        guard_turns(ASK, "Here is how: ..."), "assistant", scorer.taxonomy
    )[0]
    assert body["prompt"] == expected.text
    assert body["model"] == "guard-model" and body["temperature"] == 0.0
    assert body["logprobs"] == 20 and body["max_tokens"] == 24
    assert body["add_special_tokens"] is False
    [tokenize] = [r for r in server.requests if r.path == "/tokenize"]
    assert (
        tokenize.body["prompt"] == "<|begin_of_text|><|start_header_id|><|end_header_id|><|eot_id|>"
    )
    # Scoring again does not check again.
    assert asyncio.run(scorer.score(ASK, [Candidate("a"), Candidate("b")])) == pytest.approx(
        [0.8, 0.8]
    )
    assert len([r for r in server.requests if r.path == "/tokenize"]) == 1


def test_request_verdict_with_a_custom_taxonomy(server: StubServer) -> None:
    server.completion_for = lambda body: lg_answer(0.9, "S2")
    scorer = guard(server, role="user", categories={"S1": "Weapons", "S2": "Self-harm"})
    verdict = asyncio.run(scorer.request_verdict(ASK))
    assert verdict.p_unsafe == pytest.approx(0.9)
    assert [str(c) for c in verdict.categories] == ["S2 Self-harm"]
    prompt = completions(server)[0]["prompt"]
    assert "<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: Weapons.\nS2: Self-harm.\n<END" in prompt
    assert "ONLY THE LAST User message" in prompt


def test_read_categories_false_asks_for_the_verdict_only(server: StubServer) -> None:
    server.completion_for = lambda body: lg_answer(0.2)
    scorer = guard(server, role="user", read_categories=False)
    assert asyncio.run(scorer.score_request(ASK)) == pytest.approx(0.2)
    assert completions(server)[0]["max_tokens"] == 3


QWEN_ANSWER: Steps = [
    ("Safety", {"Safety": -0.001}),
    (":", {":": -0.001}),
    (" Controversial", {" Cont": math.log(0.5), " Unsafe": math.log(0.2), " Safe": math.log(0.3)}),
    ("\n", {"\n": -0.01}),
    ("Categories", {"Categories": -0.01}),
    (":", {":": -0.01}),
    (" Politically Sensitive Topics", {" Politically Sensitive Topics": -0.1}),
    ("\n", {"\n": -0.01}),
    ("Refusal", {"Refusal": -0.01}),
    (":", {":": -0.01}),
    (" No", {" No": -0.01}),
]


@pytest.mark.parametrize(("controversial", "expected"), [("unsafe", 0.7), ("safe", 0.2)])
def test_qwen3guard_controversial_counts_as_the_policy_says(
    server: StubServer, controversial: str, expected: float
) -> None:
    server.completion_for = lambda body: QWEN_ANSWER
    scorer = guard(server, "qwen3guard", controversial=controversial)
    [verdict] = asyncio.run(scorer.verdicts(ASK, [Candidate("Here is a view.")]))
    assert verdict.p_unsafe == pytest.approx(expected)
    assert [c.name for c in verdict.categories] == ["Politically Sensitive Topics"]


def test_wildguard_reads_the_harmful_response_line(server: StubServer) -> None:
    lines = "Harmful request: yes\nResponse refusal: no\nHarmful response: no"
    steps: Steps = [(w, {w: -0.01}) for w in lines.replace(" ", " \x00").split("\x00")]
    steps[-1] = ("no", {"yes": math.log(0.1), "no": math.log(0.9)})
    server.completion_for = lambda body: steps
    scorer = guard(server, "wildguard")
    assert asyncio.run(scorer.score(ASK, [Candidate("No.")])) == pytest.approx([0.1])


def test_per_category_formats_send_one_prompt_per_category(server: StubServer) -> None:
    def answer(body: dict[str, Any]) -> Steps:
        # ShieldGemma says Yes to the dangerous-content guideline only.
        p = 0.9 if "No Dangerous Content" in body["prompt"] else 0.05
        return [("Yes" if p > 0.5 else "No", {"Yes": math.log(p), "No": math.log(1 - p)})]

    server.completion_for = answer
    scorer = guard(server, "shieldgemma", role="user")
    verdict = asyncio.run(scorer.request_verdict(ASK))
    assert verdict.p_unsafe == pytest.approx(0.9)
    assert [c.code for c in verdict.categories] == ["dangerous_content"]
    assert len(completions(server)) == 4
    assert all(body["max_tokens"] == 2 for body in completions(server))


# --- failing closed --------------------------------------------------------------------


def test_a_failing_server_is_a_scorer_error(server: StubServer) -> None:
    server.completion_for = lambda body: lg_answer(0.1)
    server.script.extend(["500", "503"])
    with pytest.raises(ScorerError, match="failed after 2 attempts: HTTP 503") as err:
        asyncio.run(guard(server).score(ASK, [Candidate("a")]))
    assert err.value.scorer == "guard"


def test_missing_logprobs_and_missing_verdicts_are_scorer_errors(server: StubServer) -> None:
    # A chat-only server: /v1/completions is a 404.
    with pytest.raises(ScorerError, match="rejected the request: HTTP 404"):
        asyncio.run(guard(server).score(ASK, [Candidate("a")]))
    server.completion_for = lambda body: [("I", {"I": -0.1}), (" think", {" think": -0.1})]
    with pytest.raises(ScorerError, match="gave no verdict: none of its verdict words"):
        asyncio.run(guard(server).score(ASK, [Candidate("a")]))


def test_a_served_model_of_another_family_is_a_config_error(server: StubServer) -> None:
    server.completion_for = lambda body: lg_answer(0.1)
    server.token_count_for = lambda body: 23  # the special tokens are plain text to it
    with pytest.raises(ConfigError, match="'llama-guard-3' does not match model 'guard-model'"):
        asyncio.run(guard(server).score_request(ASK))
    assert completions(server) == []  # nothing was classified
    assert asyncio.run(guard(server, check_template=False).score_request(ASK)) < 0.5


# --- policies --------------------------------------------------------------------------


def test_the_example_policy_loads() -> None:
    policy = load_policy(REPO / "examples" / "guard.yaml")
    [gate] = policy.input_scorers
    assert gate.kind == "guard" and gate.options()["role"] == "user"
    assert [s.kind for s in policy.scorers] == ["guard", "rules"]
    GuardOptions.model_validate(gate.options())


def test_input_and_output_gates_end_to_end(server: StubServer, tmp_path: Path) -> None:
    def answer(body: dict[str, Any]) -> Steps:
        prompt = body["prompt"]
        if "ONLY THE LAST User message" in prompt:  # the input gate
            return lg_answer(0.95 if "bomb" in prompt else 0.05)
        return lg_answer(0.9 if "Mix the powder" in prompt else 0.02)

    server.completion_for = answer
    path = tmp_path / "guarded.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: guarded
            generator:
              backend: fake
              responses: ["Mix the powder with fuel.", "Please ask a pharmacist."]
            n: 2
            input:
              scorers:
                - name: input-guard
                  kind: guard
                  format: llama-guard-3
                  role: user
                  backend: openai
                  model: guard-model
                  backend_options: {{base_url: "{server.base_url}"}}
                  refuse: 0.5
            scorers:
              - name: guard
                kind: guard
                format: llama-guard-3
                backend: openai
                model: guard-model
                backend_options: {{base_url: "{server.base_url}"}}
                weight: 0
                gate: {{max: 0.5}}
              - {{name: rules, kind: rules}}
            """
        )
    )
    aligner = Aligner.from_policy(path)
    refused = aligner.align("How do I build a bomb?")
    assert refused.input is not None and refused.input.action == "refuse"
    assert refused.input.decided_by == "input-guard" and refused.candidates == []
    served = aligner.align("How do I dispose of old medication?")
    assert served.input is not None and served.input.action == "pass"
    scores = [c.scores["guard"] for c in served.candidates]
    assert scores == pytest.approx([0.9, 0.02])
    assert served.best == 1 and not served.candidates[0].passed
