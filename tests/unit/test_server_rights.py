"""Per-key rights: who may receive candidates, and who may see the text that failed a gate.

A live server on loopback (fake backend) with four keys: one without rights, one
with ``candidates``, one with ``audit`` (from a keys file, by its SHA-256), and
one given with the deprecated ``audit_keys``.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aligntime.errors import ConfigError
from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.config import (
    ApiKey,
    load_keys_file,
    parse_anonymous_rights,
    parse_api_key,
)
from aligntime.server.testing import LiveServer

MARK = "Zorblax"
"""A word only the gate-failing candidate says: wherever it shows up, that text leaked."""
POLICY = f"""
name: mixed
generator:
  backend: fake
  responses:
    - "Keep the child hydrated and call a doctor if the fever is high."
    - "You idiot {MARK}, figure it out yourself, damn it."
n: 2
max_n: 6
scorers:
  - {{name: safety, kind: classifier, weight: 0.5, gate: {{max: 0.6}}}}
  - {{name: rules, kind: rules}}
fallback: Sorry, no good answer.
"""
RUDE = f"""
name: rude
generator: {{backend: fake, responses: ["You stupid idiot {MARK}, damn you."]}}
n: 2
scorers:
  - {{name: safety, kind: classifier, gate: {{max: 0.6}}}}
fallback: Sorry, no good answer.
"""
PLAIN, CANDIDATES, AUDITOR, OLD_AUDITOR = "sk-plain", "sk-cand", "sk-audit", "sk-old-audit"
ASK = [{"role": "user", "content": "My child has a fever."}]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("rights")
    (folder / "mixed.yaml").write_text(textwrap.dedent(POLICY))
    (folder / "rude.yaml").write_text(textwrap.dedent(RUDE))
    digest = hashlib.sha256(AUDITOR.encode()).hexdigest()
    keys_file = folder / "keys.yaml"
    keys_file.write_text(
        "keys:\n"
        f"  - {{name: cand, secret: {CANDIDATES}, rights: [candidates]}}\n"
        f"  - {{name: auditor, sha256: {digest}, rights: [audit]}}\n"
    )
    options = ServerOptions(
        api_keys=frozenset({PLAIN}),
        keys=load_keys_file(keys_file),
        audit_keys=frozenset({OLD_AUDITOR}),
        audit_db=folder / "audit.db",
        reports_dir=None,
    )
    app = app_from_policies([folder / "mixed.yaml", folder / "rude.yaml"], options)
    app.state.service.load()
    with LiveServer(app) as server:
        yield server


def _chat(
    live: LiveServer, key: str | None, *, stream: bool = False, **body: Any
) -> tuple[int, dict[str, Any], str]:
    """Status, the answer (the stream's chunks folded into one body) and the raw bytes."""
    payload = {"model": "mixed", "messages": ASK, "stream": stream, **body}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    res = httpx.post(live.url + "/v1/chat/completions", json=payload, headers=headers, timeout=60)
    if res.status_code != 200 or not stream:
        return res.status_code, res.json(), res.text
    events = [line[6:] for line in res.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    final = next(c for c in chunks if c.get("aligntime"))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    folded = {"choices": [{"message": {"content": text}}], "aligntime": final["aligntime"]}
    return res.status_code, folded, res.text


WITH_CANDIDATES = {"aligntime": {"return_candidates": True}}


@pytest.mark.parametrize("stream", [False, True])
def test_a_key_without_the_candidates_right_gets_403_naming_the_field(
    live: LiveServer, stream: bool
) -> None:
    status, body, _ = _chat(live, PLAIN, stream=stream, **WITH_CANDIDATES)
    assert status == 403
    error = body["error"]
    assert error["param"] == "aligntime.return_candidates"
    assert error["type"] == "permission_error" and error["code"] == "candidates_forbidden"
    assert "aligntime.return_candidates" in error["message"]
    # The same key gets its answer when it does not ask for the candidates.
    status, body, _ = _chat(live, PLAIN, stream=stream)
    assert status == 200 and "candidates" not in body["aligntime"]
    assert body["choices"][0]["message"]["content"].startswith("Keep the child hydrated")


@pytest.mark.parametrize("stream", [False, True])
def test_the_candidates_right_gets_scores_but_not_the_text_that_failed_a_gate(
    live: LiveServer, stream: bool
) -> None:
    status, body, raw = _chat(live, CANDIDATES, stream=stream, **WITH_CANDIDATES)
    assert status == 200
    good, bad = body["aligntime"]["candidates"]
    assert good["passed"] and not good["redacted"] and good["text"].startswith("Keep")
    assert not bad["passed"] and bad["redacted"] and bad["text"] is None
    assert bad["gate_failures"] == ["safety"] and bad["scores"]["safety"] > 0.6
    assert bad["tokens"] > 0 and set(bad["scores"]) == {"safety", "rules"}
    assert MARK not in raw


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("key", [AUDITOR, OLD_AUDITOR])
def test_the_audit_right_sees_every_candidates_text(
    live: LiveServer, stream: bool, key: str
) -> None:
    status, body, _ = _chat(live, key, stream=stream, **WITH_CANDIDATES)
    assert status == 200
    bad = body["aligntime"]["candidates"][1]
    assert not bad["passed"] and not bad["redacted"] and MARK in bad["text"]


def test_the_audit_log_keeps_the_text_whatever_the_caller_was_shown(live: LiveServer) -> None:
    status, body, _ = _chat(live, CANDIDATES, **WITH_CANDIDATES)
    assert status == 200 and body["aligntime"]["candidates"][1]["redacted"]
    headers = {"Authorization": f"Bearer {AUDITOR}"}
    one = httpx.get(f"{live.url}/v1/aligntime/audit/{body['id']}", headers=headers, timeout=30)
    assert one.status_code == 200
    assert MARK in one.json()["candidates"][1]["text"]
    for key in (PLAIN, CANDIDATES):  # only the audit right reads the log
        refused = httpx.get(
            f"{live.url}/v1/aligntime/audit/{body['id']}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "audit_forbidden"


def _every_endpoint_and_mode(live: LiveServer, key: str | None) -> list[tuple[str, str]]:
    """(what was asked, what came back) for every route a client can reach and every
    request mode: streamed or not, candidates or not, each usable strategy, both
    policies (one answers with the fallback), several choices."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    seen: list[tuple[str, str]] = []
    with httpx.Client(base_url=live.url, headers=headers, timeout=60) as http:
        policies = http.get("/v1/aligntime/policies")
        strategies: list[str | None] = [None, *policies.json()["strategies"]]
        seen.append(("policies", policies.text))
        for model in ("mixed", "rude"):
            for strategy in strategies:
                for stream in (False, True):
                    for ext in ({}, {"return_candidates": True}):
                        ext = {**ext, **({"strategy": strategy} if strategy else {})}
                        body = {"model": model, "messages": ASK, "stream": stream,
                                "aligntime": ext}  # fmt: skip
                        res = http.post("/v1/chat/completions", json=body)
                        seen.append((json.dumps(body), res.text))
                        assert res.status_code in (200, 403), res.text
        ids = [json.loads(t)["id"] for _, t in seen if t.startswith('{"id"')]
        paths = ["/v1/models", "/v1/models/mixed", "/v1/aligntime/audit",
                 *(f"/v1/aligntime/audit/{i}" for i in ids[:3]), "/v1/aligntime/reports",
                 "/metrics", "/healthz", "/", "/audit", "/reports"]  # fmt: skip
        seen += [(p, http.get(p).text) for p in paths]
    return seen


def test_no_gate_failed_text_reaches_a_key_without_the_audit_right(live: LiveServer) -> None:
    for key in (PLAIN, CANDIDATES):
        seen = _every_endpoint_and_mode(live, key)
        leaks = [asked for asked, got in seen if MARK in got]
        assert leaks == [], f"{key}: gate-failed text reached it for {leaks[:3]}"
    # The check can fail: the audit right is shown the same text over the same routes.
    seen = _every_endpoint_and_mode(live, AUDITOR)
    assert any(MARK in got for asked, got in seen if "return_candidates" in asked)
    assert any(MARK in got for asked, got in seen if asked.startswith("/v1/aligntime/audit/"))


def test_without_keys_the_anonymous_rights_apply_and_never_audit(tmp_path: Path) -> None:
    (tmp_path / "mixed.yaml").write_text(textwrap.dedent(POLICY))
    policy = [tmp_path / "mixed.yaml"]
    with LiveServer(app_from_policies(policy, ServerOptions())) as server:
        status, body, _ = _chat(server, None, **WITH_CANDIDATES)
        assert status == 403 and body["error"]["param"] == "aligntime.return_candidates"
    opened = ServerOptions(anonymous_rights=frozenset({"candidates"}), audit_db=tmp_path / "a.db")
    with LiveServer(app_from_policies(policy, opened)) as server:
        status, body, raw = _chat(server, None, stream=True, **WITH_CANDIDATES)
        assert status == 200 and body["aligntime"]["candidates"][1]["redacted"]
        assert MARK not in raw
        assert httpx.get(server.url + "/v1/aligntime/audit").status_code == 403
    with pytest.raises(ValueError, match="audit right needs a key"):
        ServerOptions(anonymous_rights=frozenset({"audit"}))


# --- how keys and rights are given -------------------------------------------------------


def test_api_key_option_takes_a_plain_key_or_name_key_rights() -> None:
    assert parse_api_key("sk-plain") == "sk-plain"
    named = parse_api_key("alice:sk-1:candidates+audit")
    assert isinstance(named, ApiKey)
    assert (named.name, named.secret, named.rights) == ("alice", "sk-1", {"candidates", "audit"})
    assert isinstance(bob := parse_api_key("bob:sk-2:"), ApiKey) and bob.rights == frozenset()
    with pytest.raises(ConfigError, match="unknown right 'admin'") as info:
        parse_api_key("carol:sk-3:admin")
    assert "sk-3" not in str(info.value)  # the secret is never echoed
    with pytest.raises(ConfigError, match="secret"):
        parse_api_key("dave::candidates")
    assert parse_anonymous_rights("candidates") == {"candidates"}
    with pytest.raises(ConfigError, match="needs a key"):
        parse_anonymous_rights("audit")


def test_a_key_given_twice_holds_both_sets_of_rights() -> None:
    options = ServerOptions(
        api_keys=frozenset({"sk-1"}),
        audit_keys=frozenset({"sk-2"}),
        keys=(ApiKey(name="alice", secret="sk-1", rights=frozenset({"candidates"})),),
    )
    rights = {k.name.split("|")[-1]: k.rights for k in options.all_keys()}
    assert rights["alice"] == {"candidates"} and len(rights) == 2
    assert {"audit"} in rights.values()
    assert options.authenticated


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keys: []", "keys: List should have at least 1 item"),
        ("keys:\n  - {name: a, rights: [audit]}", "keys.0 (a): Value error, give exactly one"),
        ("keys:\n  - {name: a, secret: s, rights: [root]}", "keys.0 (a).rights.0"),
        ("keys:\n  - {name: a, sha256: abc}", "keys.0 (a).sha256: Value error, must be 64 hex"),
        ("keys:\n  - {name: a, secret: s}\n  - {name: a, secret: t}", "'a' is given twice"),
        ("keys: [", "not valid YAML or JSON"),
        ("[1, 2]", "the file: Input should be a valid dictionary"),
    ],
)
def test_a_bad_keys_file_is_refused_naming_the_entry_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_keys_file(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_serve_refuses_a_bad_keys_file_with_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "a", "secret": "s", "rights": ["root"]}]}))
    for args in (["--keys-file", str(path)], ["--api-key", "a:s:root"]):
        proc = subprocess.run(
            [sys.executable, "-m", "aligntime", "serve", "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "keys.0 (a).rights.0" in proc.stderr or "unknown right 'root'" in proc.stderr
