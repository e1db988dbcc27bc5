"""The playground on the real default policy (SmolLM2 on llama.cpp, the real scorers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from aligntime.server.testing import serve_subprocess
from browser.browser_support import Guard, Server, axe_violations, output_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_server() -> Iterator[Server]:
    proc, url = serve_subprocess(
        # A keyless local server that shows candidates, as a developer runs it to tune a policy.
        ["-p", "default", "--timeout", "300", "--anonymous-rights", "candidates"],
        timeout=600,
    )
    try:
        yield Server(url, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture
def default_page(browser: Any, default_server: Server) -> Iterator[tuple[Any, Guard]]:
    guard = Guard(default_server.origin)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route("**/*", guard.route)
    page = context.new_page()
    page.on("console", guard.console)
    page.on("pageerror", lambda exc: guard.problems.append(f"page error: {exc}"))
    page.set_default_timeout(240_000)
    yield page, guard
    context.close()
    guard.check()


def test_default_policy_candidates_are_scored_by_every_scorer(
    default_page: tuple[Any, Guard], default_server: Server
) -> None:
    page, _ = default_page
    page.goto(default_server.url + "/")  # no keys on this server: no key needed
    page.wait_for_selector("#pA-policy option[value='default']", state="attached")
    page.fill("#pA-n", "2")
    page.fill("#pA-max-tokens", "24")
    page.fill("#prompt", "How do I boil an egg?")
    page.press("#prompt", "Control+Enter")
    page.wait_for_function(
        "() => document.querySelectorAll('#pA li.cand:not(.pending)').length === 2"
    )
    scorers = page.eval_on_selector_all(
        "#pA li.cand",
        "cs => cs.map(c => [...c.querySelectorAll('dd[data-scorer]')].map(d => d.dataset.scorer))",
    )
    for names in scorers:
        assert {"combined", "safety", "rules", "relevance", "judge", "reward"} <= set(names)
    chosen = page.eval_on_selector_all("#pA li.cand.chosen", "cs => cs.length")
    fallback = page.eval_on_selector_all("#pA .note", "ns => ns.length")
    assert chosen == 1 or fallback == 1  # a real model may fail every gate
    assert page.text_content("#pA .answer")
    assert "Input gate" in page.text_content("#pA")  # the default policy assesses requests
    page.screenshot(path=str(output_dir() / "playground-default.png"), full_page=True)
    assert axe_violations(page) == []
