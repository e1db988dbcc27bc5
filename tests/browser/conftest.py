"""The browser tests' fixtures (defined in browser_support): the live server, Chromium,
the request guard and a guarded page."""

from browser.browser_support import browser, guard, page, server  # noqa: F401
