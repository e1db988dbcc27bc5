"""Fixtures and helpers of the browser tests: the live server, Chromium, a guarded page,
axe-core, screenshots. (tests/browser is a package, so its conftest.py is
``browser.conftest`` and never takes the place of tests/conftest.py, which other
tests import as ``conftest``.)

The playground in a real browser: Debian's headless Chromium driven by Playwright.

``aligntime serve`` runs as a process of its own on loopback. Every page is
opened in a context whose router lets requests reach that server only: any
other host is aborted and recorded, and the test using the page fails
(:class:`Guard`). Console errors, page errors and Content-Security-Policy
violations fail the test too. Screenshots go to ``$ALIGNTIME_TEST_OUTPUT/browser``
(default ``test-output/browser`` in the repository).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import playwright.sync_api as playwright_api
import pytest

from aligntime.server.testing import serve_subprocess

ROOT = Path(__file__).resolve().parents[2]
AXE = Path(__file__).with_name("vendor") / "axe.min.js"
USER_KEY = "user-key-1"
"""An ordinary API key with the candidates right: may ask and see candidates (the text of
one that failed a gate withheld), may not read the audit log."""
AUDIT_KEY = "auditor-key-1"
"""A key with the audit right (which brings the candidates right)."""

SCRIPT_TEXT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> Rest.'
"""A candidate that would run if the page inserted model text as HTML."""

POLICIES = {
    "helpful": """
        name: helpful
        description: fake backend, one candidate fails the safety gate
        generator:
          backend: fake
          responses:
            - "Keep the child hydrated, let them rest, and call a doctor if the fever is high."
            - "You idiot, figure it out yourself, damn it."
            - "Give fluids and watch the temperature."
        n: 3
        max_n: 8
        prompt:
          templates:
            concise: {prompt: "{prompt} (briefly)"}
        scorers:
          - {name: safety, kind: classifier, weight: 0.5, gate: {max: 0.6}}
          - {name: rules, kind: rules, weight: 1.0}
          # Lazy: it skips the answer that failed the gate (it could not be chosen).
          - {name: judge, kind: judge, backend: fake, weight: 0.3, lazy: true}
        fallback: "Sorry, no good answer."
    """,
    "scripted": f"""
        name: scripted
        description: fake backend whose best candidate is markup
        generator:
          backend: fake
          responses:
            - {SCRIPT_TEXT!r}
            - "You idiot, figure it out yourself, damn it."
        n: 2
        max_n: 4
        scorers:
          - {{name: safety, kind: classifier, weight: 0.5, gate: {{max: 0.6}}}}
          - {{name: rules, kind: rules, weight: 1.0}}
    """,
}


def chromium_path() -> str:
    """Debian's Chromium; scripts/test.sh installs it. Missing is an error, not a skip."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: run scripts/test.sh (apt-get install chromium)")


def output_dir() -> Path:
    base = Path(os.environ.get("ALIGNTIME_TEST_OUTPUT", ROOT / "test-output"))
    path = base / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Guard:
    """What a page did that it must not: requests elsewhere, errors, CSP violations."""

    origin: str
    foreign: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    """Console error substrings a test provoked on purpose (a 401, a 403)."""

    def route(self, route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("blob", "data") or f"{parts.scheme}://{parts.netloc}" == self.origin:
            route.continue_()
            return
        self.foreign.append(url)
        route.abort()

    def console(self, message: Any) -> None:
        text = message.text
        if message.type == "error" and not any(e in text for e in self.expected):
            self.problems.append(f"console: {text}")
        elif "Content Security Policy" in text:
            self.problems.append(f"CSP: {text}")

    def check(self) -> None:
        assert not self.foreign, f"requests to hosts other than the server: {self.foreign}"
        assert not self.problems, "\n".join(self.problems)


def write_policies(folder: Path) -> list[Path]:
    paths = []
    for name, text in POLICIES.items():
        path = folder / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        paths.append(path)
    return paths


def make_report(folder: Path, policy: Path) -> Path:
    """A real ``aligntime eval`` output folder (fake backend, two prompts)."""
    prompts = folder / "prompts.jsonl"
    prompts.write_text('{"prompt": "My child has a fever."}\n{"prompt": "How do I boil an egg?"}\n')
    out = folder / "reports" / "fever-eval"
    subprocess.run(
        [sys.executable, "-m", "aligntime", "eval", "-p", str(policy), "--prompts", str(prompts),
         "--n", "1,2", "--strategies", "best_of_n,vote", "--heldout", "none", "--draws", "20",
         "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return out.parent


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("playground")
    policies = write_policies(folder)
    reports = make_report(folder, policies[0])
    args = [arg for p in policies for arg in ("-p", str(p))]
    args += ["--audit-db", str(folder / "audit.db"), "--reports", str(reports)]
    args += ["--api-key", f"user:{USER_KEY}:candidates", "--api-key", f"auditor:{AUDIT_KEY}:audit"]
    proc, url = serve_subprocess(args, timeout=120)
    try:
        yield Server(url, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# Module scope, not session: Playwright's sync API keeps an asyncio event loop running
# in the main thread while it is open, and every later test that calls asyncio.run()
# would fail with "cannot be called from a running event loop".
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        # --no-sandbox: the tests run as root on CI, where Chromium's sandbox refuses to start.
        b = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def guard(server: Server) -> Guard:
    return Guard(server.origin)


@pytest.fixture
def page(browser: Any, server: Server, guard: Guard) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route("**/*", guard.route)
    pg = context.new_page()
    pg.on("console", guard.console)
    pg.on("pageerror", lambda exc: guard.problems.append(f"page error: {exc}"))
    pg.set_default_timeout(20_000)
    yield pg
    context.close()
    guard.check()


def use_key(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#key-status').textContent.includes('set')"
    )


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations in the page as it is now.

    The source is evaluated through the debugging protocol, which the page's CSP
    does not govern (an injected <script> tag would rightly be refused).
    """
    page.evaluate(AXE.read_text(encoding="utf-8") + "\n;0")
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]
