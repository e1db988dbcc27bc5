"""A prompt longer than the real model's context is the client's error (issue 18, item 3).

SmolLM2 on llama.cpp with a 256-token context per sequence: a longer
conversation gets a 400 ``context_length_exceeded`` with llama.cpp's own token
counts, not a 503 that blames the backend; a short one is still answered.
"""

from __future__ import annotations

import re
import textwrap

import httpx
import pytest

from aligntime.policy.loader import parse_policy
from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.testing import LiveServer

pytestmark = pytest.mark.slow

POLICY = """
name: small
generator: {backend: llamacpp, model: smollm2-135m-instruct, context: 256, parallel: 1,
            max_tokens: 8}
n: 1
scorers:
  - {name: rules, kind: rules}
"""


def test_a_prompt_over_the_context_is_a_400_with_llamacpps_counts() -> None:
    app = app_from_policies([parse_policy(textwrap.dedent(POLICY))], ServerOptions(timeout_s=120))
    app.state.service.load()
    url = "/v1/chat/completions"
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        long = {"model": "small", "messages": [{"role": "user", "content": "egg " * 600}]}
        r = http.post(url, json=long)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
        # llama.cpp counts the templated prompt; its context is the policy's 256 tokens.
        counts = re.search(r"needs (\d+) tokens, .* context of (\d+) tokens", error["message"])
        assert counts is not None, error["message"]
        assert int(counts.group(1)) > 600 and int(counts.group(2)) == 256
        short = {"model": "small", "messages": [{"role": "user", "content": "Hi!"}]}
        assert http.post(url, json=short).status_code == 200
