"""Fuzz the server's own OpenAPI schema with schemathesis: no input may cause a 5xx."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.testing import LiveServer

POLICY = """
name: fuzz
generator: {backend: fake, responses: ["A calm, helpful answer."]}
n: 2
max_n: 4
prompt:
  templates:
    concise: {prompt: "{prompt} (briefly)"}
scorers:
  - {name: safety, kind: classifier, gate: {max: 0.6}}
  - {name: rules, kind: rules}
"""


def test_no_generated_request_gets_a_server_error(tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(textwrap.dedent(POLICY))
    app = app_from_policies([path], ServerOptions(max_tokens=64, timeout_s=10))
    app.state.service.load()
    with LiveServer(app) as live:
        schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
        operations = [op.ok() for op in schema.get_all_operations()]
        paths = sorted(op.path for op in operations)
        assert paths == ["/healthz", "/metrics", "/v1/chat/completions", "/v1/models"]
        session = requests.Session()
        seen: dict[int, int] = {}

        # Valid inputs (per the schema) and invalid ones (schemathesis' negative mode).
        strategy = st.one_of(
            *(op.as_strategy(mode) for op in operations for mode in schemathesis.GenerationMode)
        )

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=live.url, session=session, timeout=15)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}

        check()
    # The fuzzer reached both the happy path and the validation errors.
    assert seen.get(200, 0) > 0
    assert sum(n for code, n in seen.items() if 400 <= code < 500) > 0, seen


@pytest.mark.parametrize("content", [b"\xff\xfe", b'{"model": "fuzz", "messages": [{"role": '])
def test_broken_bytes_are_400(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(textwrap.dedent(POLICY))
    with LiveServer(app_from_policies([path], ServerOptions())) as live:
        r = requests.post(
            live.url + "/v1/chat/completions",
            data=content,
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 400 and "error" in r.json()
