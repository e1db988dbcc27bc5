"""The playground's pages and the API routes it reads, on a live server (fake backend).

The browser itself is driven in tests/browser; these check what the server
promises: headers, the asset budget, authentication, the audit right, filters,
and that report names cannot reach outside the reports folder.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from aligntime.cli.main import app as cli
from aligntime.errors import ConfigError
from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.testing import LiveServer

POLICY = """
name: fake-ui
generator:
  backend: fake
  responses:
    - "Keep the child hydrated and call a doctor if the fever is high."
    - "You idiot, figure it out yourself, damn it."
n: 2
max_n: 4
prompt:
  templates:
    concise: {prompt: "{prompt} (briefly)"}
scorers:
  - {name: safety, kind: classifier, weight: 0.5, gate: {max: 0.6}}
  - {name: rules, kind: rules}
"""
RUDE = """
name: rude-ui
generator: {backend: fake, responses: ["You stupid idiot, damn you."]}
n: 2
scorers:
  - {name: safety, kind: classifier, gate: {max: 0.6}}
fallback: Sorry, no good answer.
"""
USER, AUDITOR = "user-key", "auditor-key"
ASK = [{"role": "user", "content": "My child has a fever."}]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _report(folder: Path, name: str, nan_record: bool = False) -> Path:
    out = folder / name
    out.mkdir(parents=True)
    summary = {"config": {"policy": "fake-ui", "prompts": "p.jsonl", "ns": [1, 2]}, "results": []}
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "score_vs_n.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    record = {"id": "a", "prompt": "hi", "candidates": [{"text": "x", "score": float("nan")}]}
    (out / "results.jsonl").write_text(
        json.dumps(record) + "\n" + ("{broken\n" if nan_record else "")
    )
    (out / "report.html").write_text("<html><body>report</body></html>")
    return out


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("ui")
    (folder / "fake.yaml").write_text(textwrap.dedent(POLICY))
    (folder / "rude.yaml").write_text(textwrap.dedent(RUDE))
    reports = folder / "reports"
    _report(reports, "one", nan_record=True)
    (reports / "not-a-report").mkdir()
    (folder / "secret.txt").write_text("outside the reports folder")
    options = ServerOptions(
        api_keys=frozenset({USER}),
        audit_keys=frozenset({AUDITOR}),
        audit_db=folder / "audit.db",
        reports_dir=reports,
        rate_limit=1000,
    )
    app = app_from_policies([folder / "fake.yaml", folder / "rude.yaml"], options)
    app.state.service.load()
    with LiveServer(app) as server:
        yield server


def _get(live: LiveServer, path: str, key: str | None = USER, **params: object) -> httpx.Response:
    headers = _auth(key) if key else {}
    return httpx.get(live.url + path, headers=headers, params=params, timeout=30)  # type: ignore[arg-type]


# --- pages ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/audit", "/reports"])
def test_pages_are_served_with_a_strict_content_security_policy(
    live: LiveServer, path: str
) -> None:
    res = httpx.get(live.url + path)  # no key: the shell holds no data
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    csp = res.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert res.headers["x-content-type-options"] == "nosniff"
    # No inline script or style in the shell: the policy would refuse them.
    assert not re.search(r"<script(?![^>]*\bsrc=)", res.text)
    assert "<style" not in res.text and " style=" not in res.text


def test_assets_ship_in_the_package_within_budget_and_fetch_nothing_elsewhere(
    live: LiveServer,
) -> None:
    folder = resources.files("aligntime.server.ui").joinpath("static")
    files = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    assert {"index.html", "app.js", "app.css"} <= set(files)
    assert sum(len(b) for b in files.values()) <= 300 * 1024
    for name, data in files.items():
        text = data.decode()
        # An SVG names its XML namespace with a URL; that is not a request.
        urls = re.findall(r"https?://[^\s\"')]+", text.replace("http://www.w3.org/2000/svg", ""))
        assert urls == [], f"{name} refers to {urls}"
    for name in ("app.js", "app.css", "icon.svg"):
        res = httpx.get(f"{live.url}/ui/{name}")
        assert res.status_code == 200 and res.content == files[name]
        again = httpx.get(f"{live.url}/ui/{name}", headers={"If-None-Match": res.headers["etag"]})
        assert again.status_code == 304
    assert httpx.get(f"{live.url}/ui/index.py").status_code == 404
    assert httpx.get(f"{live.url}/ui/..%2F__init__.py").status_code == 404


def test_no_ui_serves_the_api_alone(tmp_path: Path) -> None:
    (tmp_path / "fake.yaml").write_text(textwrap.dedent(POLICY))
    app = app_from_policies([tmp_path / "fake.yaml"], ServerOptions(ui=False))
    with LiveServer(app) as server:
        assert httpx.get(server.url + "/").status_code == 404
        assert httpx.get(server.url + "/ui/app.js").status_code == 404
        assert httpx.get(server.url + "/v1/models").status_code == 200
        assert httpx.get(server.url + "/v1/aligntime/policies").status_code == 200


def test_serve_refuses_a_reports_path_that_is_not_a_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--reports", str(tmp_path / "missing")])
    assert isinstance(result.exception, ConfigError)
    assert "--reports" in str(result.exception)


# --- the API the page reads ---------------------------------------------------------------


def test_policies_need_a_key_and_describe_what_a_request_may_vary(live: LiveServer) -> None:
    assert _get(live, "/v1/aligntime/policies", key=None).status_code == 401
    assert _get(live, "/v1/aligntime/policies", key="wrong").status_code == 401
    body = _get(live, "/v1/aligntime/policies").json()
    fake = next(p for p in body["data"] if p["name"] == "fake-ui")
    assert fake["n"] == 2 and fake["max_n"] == 4 and fake["templates"] == ["concise"]
    safety = next(s for s in fake["scorers"] if s["name"] == "safety")
    assert safety["gate"] == {"min": None, "max": 0.6} and safety["direction"] == "lower"
    assert {"best_of_n", "vote"} <= set(body["strategies"])


def test_the_playground_routes_share_the_api_rate_limit(tmp_path: Path) -> None:
    (tmp_path / "fake.yaml").write_text(textwrap.dedent(POLICY))
    app = app_from_policies([tmp_path / "fake.yaml"], ServerOptions(rate_limit=2))
    with LiveServer(app) as server:
        codes = [httpx.get(server.url + "/v1/aligntime/policies").status_code for _ in range(3)]
        assert codes == [200, 200, 429]


def _chat(live: LiveServer, model: str, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": ASK, **extra}
    return httpx.post(live.url + "/v1/chat/completions", json=body, headers=_auth(USER), timeout=60)


def test_the_audit_log_is_read_with_the_audit_right_only(live: LiveServer) -> None:
    assert _chat(live, "fake-ui").status_code == 200
    assert _get(live, "/v1/aligntime/audit", key=None).status_code == 401
    refused = _get(live, "/v1/aligntime/audit")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "audit_forbidden"
    rows = _get(live, "/v1/aligntime/audit", key=AUDITOR).json()["data"]
    assert rows and rows[0]["policy"] == "fake-ui" and rows[0]["candidates"] == 2
    one = _get(live, f"/v1/aligntime/audit/{rows[0]['id']}", key=AUDITOR).json()
    assert [c["index"] for c in one["candidates"]] == [0, 1]
    assert {c["passed"] for c in one["candidates"]} == {True, False}
    assert _get(live, f"/v1/aligntime/audit/{rows[0]['id']}").status_code == 403
    missing = _get(live, "/v1/aligntime/audit/nope", key=AUDITOR)
    assert missing.status_code == 404


def test_audit_filters_select_fallbacks_gate_failures_errors_and_policies(
    live: LiveServer,
) -> None:
    assert _chat(live, "rude-ui").status_code == 200  # every candidate fails: fallback
    bad = _chat(live, "fake-ui", aligntime={"template": "nope"})
    assert bad.status_code == 400  # audited with its status

    def ids(**params: object) -> list[dict[str, object]]:
        res = _get(live, "/v1/aligntime/audit", key=AUDITOR, **params)
        assert res.status_code == 200, res.text
        rows: list[dict[str, object]] = res.json()["data"]
        return rows

    assert all(r["fallback"] for r in ids(flag="fallback"))
    assert {r["policy"] for r in ids(flag="fallback")} == {"rude-ui"}
    assert all(r["failed"] for r in ids(flag="gate_failure"))
    errors = ids(flag="error")
    assert errors and all(r["status"] == 400 for r in errors)
    assert {r["policy"] for r in ids(policy="rude-ui")} == {"rude-ui"}
    assert ids(flag=["fallback", "error"]) == []  # every flag must hold
    assert len(ids(last=1)) == 1
    for bad_params in ({"last": 0}, {"last": 501}, {"flag": "bogus"}):
        res = _get(live, "/v1/aligntime/audit", key=AUDITOR, **bad_params)
        assert res.status_code == 400 and res.json()["error"]["param"]


def test_without_an_audit_key_or_log_nothing_is_readable(tmp_path: Path) -> None:
    (tmp_path / "fake.yaml").write_text(textwrap.dedent(POLICY))
    no_keys = ServerOptions(audit_db=tmp_path / "a.db")  # keys off: nobody has the right
    with LiveServer(app_from_policies([tmp_path / "fake.yaml"], no_keys)) as server:
        assert httpx.get(server.url + "/v1/aligntime/audit").status_code == 403
    no_log = ServerOptions(audit_keys=frozenset({AUDITOR}))
    with LiveServer(app_from_policies([tmp_path / "fake.yaml"], no_log)) as server:
        res = httpx.get(server.url + "/v1/aligntime/audit", headers=_auth(AUDITOR))
        assert res.status_code == 404 and "--audit-db" in res.json()["error"]["message"]


def test_reports_are_listed_opened_and_kept_inside_their_folder(live: LiveServer) -> None:
    listed = _get(live, "/v1/aligntime/reports").json()["data"]
    assert [r["name"] for r in listed] == ["one"] and listed[0]["ns"] == [1, 2]
    opened = _get(live, "/v1/aligntime/report", name="one")
    assert opened.status_code == 200
    body = opened.json()  # NaN in results.jsonl arrives as null; a damaged line is skipped
    assert body["plots"] == ["score_vs_n.png"] and body["has_html"]
    assert body["examples"] == [
        {"id": "a", "prompt": "hi", "candidates": [{"text": "x", "score": None}]}
    ]
    plot = _get(live, "/v1/aligntime/report/plot", name="one", plot="score_vs_n.png")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    html = _get(live, "/v1/aligntime/report/html", name="one")
    assert html.status_code == 200 and "attachment" in html.headers["content-disposition"]
    assert "sandbox" in html.headers["content-security-policy"]
    for params in (
        {"name": ".."},
        {"name": "../secret.txt"},
        {"name": "not-a-report"},
        {"name": "one", "plot": "../../secret.txt"},
        {"name": "one", "plot": "summary.json"},
    ):
        path = "/v1/aligntime/report/plot" if "plot" in params else "/v1/aligntime/report"
        assert _get(live, path, **params).status_code == 404, params
    assert _get(live, "/v1/aligntime/reports", key=None).status_code == 401


def test_reports_are_off_without_a_folder(tmp_path: Path) -> None:
    (tmp_path / "fake.yaml").write_text(textwrap.dedent(POLICY))
    with LiveServer(app_from_policies([tmp_path / "fake.yaml"], ServerOptions())) as server:
        res = httpx.get(server.url + "/v1/aligntime/reports")
        assert res.status_code == 404 and "--reports" in res.json()["error"]["message"]
