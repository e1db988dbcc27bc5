"""response_format on the embedded llama.cpp backend: the grammar holds real answers to
the schema, and the gate passes them."""

from __future__ import annotations

import json
import time

import pytest

from aligntime.aligner import Aligner
from aligntime.policy.schema import Policy
from aligntime.request import AlignRequest
from aligntime.types import GenerationParams, Message

pytestmark = pytest.mark.slow

VERDICT = {
    "type": "object",
    "properties": {"capital": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]}},
    "required": ["capital"],
    "additionalProperties": False,
}


def test_llamacpp_answers_match_the_schema() -> None:
    policy = Policy.model_validate(
        {
            "name": "embedded-json",
            "generator": {"backend": "llamacpp", "parallel": 2, "context": 512},
            "n": 2,
            "scorers": [{"name": "rules", "kind": "rules"}],
        }
    )
    t0 = time.perf_counter()
    with Aligner(policy) as al:
        result = al.align_request(
            AlignRequest(
                [Message("user", "What is the capital of France? Answer in JSON.")],
                params=GenerationParams(max_tokens=24, seed=5),
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "capital", "schema": VERDICT},
                },
            )
        )
    seconds = time.perf_counter() - t0
    # Under the grammar every sample is the schema's JSON; the gate passes each one.
    assert [c.passed for c in result.candidates] == [True, True], result.candidates
    assert json.loads(result.text)["capital"] in ("Paris", "Lyon", "Nice")
    # 45 s wall (20 s of CPU) on 2 cores shared with other work at load average 12.
    assert seconds < 120
