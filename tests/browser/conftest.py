"""Fixtures of the browser tests: the live server, Chromium, and a guarded page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import playwright.sync_api as playwright_api
import pytest
from browser_support import (
    AUDIT_KEY,
    USER_KEY,
    Guard,
    Server,
    chromium_path,
    make_report,
    write_policies,
)

from aligntime.server.testing import serve_subprocess


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("playground")
    policies = write_policies(folder)
    reports = make_report(folder, policies[0])
    args = [arg for p in policies for arg in ("-p", str(p))]
    args += ["--audit-db", str(folder / "audit.db"), "--reports", str(reports)]
    args += ["--api-key", USER_KEY, "--audit-key", AUDIT_KEY]
    proc, url = serve_subprocess(args, timeout=120)
    try:
        yield Server(url, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
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
