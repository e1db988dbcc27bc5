"""The playground, audit and report views in headless Chromium against a live server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from browser.browser_support import (
    AUDIT_KEY,
    SCRIPT_TEXT,
    USER_KEY,
    Guard,
    Server,
    axe_violations,
    output_dir,
    use_key,
)

FEVER = "My child has a fever. What should I do?"


def ask(page: Any, prompt: str, *, policy: str = "helpful", pane: str = "A") -> None:
    """Choose ``policy``, type ``prompt`` and send it with Ctrl+Enter (the keyboard path)."""
    page.wait_for_selector(f"#p{pane}-policy option[value='{policy}']", state="attached")
    page.select_option(f"#p{pane}-policy", policy)
    page.fill("#prompt", prompt)
    page.press("#prompt", "Control+Enter")


def wait_for_candidates(page: Any, count: int, pane: str = "A") -> None:
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length === n",
        arg=[f"#p{pane} li.cand:not(.pending)", count],
    )


def cards(page: Any, pane: str = "A") -> list[dict[str, Any]]:
    """What each candidate card shows: text, verdict, and the value shown per scorer."""
    return page.eval_on_selector_all(
        f"#p{pane} li.cand",
        """cards => cards.map(c => ({
            index: Number(c.dataset.index),
            chosen: c.dataset.chosen === 'true',
            cls: c.className,
            badge: c.querySelector('.badge').textContent,
            reason: c.querySelector('.reason').textContent,
            text: c.querySelector('.cand-text').textContent,
            scores: Object.fromEntries([...c.querySelectorAll('dd[data-scorer]')]
                .map(d => [d.dataset.scorer, d.textContent.split(' ')[0]])),
        }))""",
    )


def api_completion(
    server: Server, policy: str, prompt: str, n: int, key: str = USER_KEY
) -> dict[str, Any]:
    body = {
        "model": policy,
        "messages": [{"role": "user", "content": prompt}],
        "aligntime": {"n": n, "return_candidates": True},
    }
    res = httpx.post(server.url + "/v1/chat/completions", json=body,
                     headers={"Authorization": f"Bearer {key}"}, timeout=60)  # fmt: skip
    res.raise_for_status()
    return res.json()


def test_candidates_appear_scored_and_the_chosen_one_is_highlighted(
    page: Any, server: Server, guard: Guard
) -> None:
    guard.expected.append("401")  # the first listing, before the key is given
    page.goto(server.url + "/")
    # The auditor: only the audit right sees the text of the candidate that failed a gate.
    use_key(page, AUDIT_KEY)
    ask(page, FEVER)
    wait_for_candidates(page, 3)
    shown = cards(page)
    chosen = [c for c in shown if c["chosen"]]
    assert len(chosen) == 1 and "chosen" in chosen[0]["cls"] and "Chosen" in chosen[0]["badge"]
    # A failed gate is said in words and a symbol, not only by colour.
    failed = [c for c in shown if "failed" in c["cls"]]
    assert failed and all("✗ Failed gate" in c["badge"] for c in failed)
    assert all("failed gate safety" in c["reason"] for c in failed)
    # The lazy judge skipped them: the card says so instead of dropping the row.
    assert all(c["scores"]["judge"] == "not" for c in failed)
    assert all(c["scores"]["judge"] != "not" for c in chosen)
    assert all(c["reason"].startswith("Lost") for c in shown if not c["chosen"])

    # The same request through the JSON API: the same candidates with the same scores.
    api = api_completion(server, "helpful", FEVER, 3, AUDIT_KEY)["aligntime"]
    by_text = {c["text"]: c for c in api["candidates"]}
    assert {c["text"] for c in shown} == set(by_text)
    for card in shown:
        want = by_text[card["text"]]
        assert card["chosen"] == want["chosen"]
        assert card["scores"]["combined"] == f"{want['score']:.3f}"
        for name, value in want["scores"].items():
            assert card["scores"][name] == f"{value:.3f}"
    answer = page.text_content("#pA .answer")
    assert answer == api["candidates"][api["best"]]["text"]

    # Candidates are on screen well within a second of the aligner finishing.
    sent, rendered, total = page.evaluate(
        "() => { const d = document.querySelector('#pA').dataset; "
        "return [Number(d.sent), Number(d.rendered), Number(d.totalS)]; }"
    )
    assert rendered - sent - total * 1000 < 1000
    page.screenshot(path=str(output_dir() / "playground.png"), full_page=True)

    # Multi-turn: the conversation stays and is sent again with the next question.
    ask(page, "And if it lasts three days?")
    wait_for_candidates(page, 3)
    page.wait_for_function("() => document.querySelectorAll('#pA .turn').length === 3")
    roles = page.eval_on_selector_all("#pA .turn", "ts => ts.map(t => t.dataset.role)")
    assert roles == ["user", "assistant", "user"]
    assert axe_violations(page) == []


def test_a_script_candidate_is_shown_as_text_and_never_run(
    page: Any, server: Server, guard: Guard
) -> None:
    guard.expected.append("401")
    page.goto(server.url + "/")
    use_key(page, USER_KEY)
    ask(page, FEVER, policy="scripted")
    wait_for_candidates(page, 2)
    texts = [c["text"] for c in cards(page)]
    assert SCRIPT_TEXT in texts
    assert page.text_content("#pA .answer") == SCRIPT_TEXT
    assert page.evaluate("window.__pwned") is None
    assert page.eval_on_selector_all("#panes script, #panes img", "els => els.length") == 0


def test_a_key_without_the_audit_right_sees_gate_failed_candidates_withheld(
    page: Any, server: Server, guard: Guard
) -> None:
    guard.expected.append("401")
    page.goto(server.url + "/")
    use_key(page, USER_KEY)  # the candidates right, not the audit right
    ask(page, FEVER)
    wait_for_candidates(page, 3)
    shown = cards(page)
    failed = [c for c in shown if "failed" in c["cls"]]
    assert len(failed) == 1 and "text withheld" in failed[0]["text"]
    assert all("idiot" not in c["text"] for c in shown)
    assert set(failed[0]["scores"]) >= {"safety", "rules"}  # its scores are still shown


def test_compare_mode_runs_two_policies_on_one_prompt(
    page: Any, server: Server, guard: Guard
) -> None:
    guard.expected.append("401")
    page.goto(server.url + "/")
    use_key(page, USER_KEY)
    page.check("input[name=mode][value=compare]")
    page.wait_for_selector("#pB-policy option[value='scripted']", state="attached")
    page.select_option("#pB-policy", "scripted")
    page.select_option("#pB-strategy", "vote")
    ask(page, FEVER, policy="helpful", pane="A")
    wait_for_candidates(page, 3, "A")
    wait_for_candidates(page, 2, "B")
    assert "by vote" in page.text_content("#pB [role=status]")
    page.screenshot(path=str(output_dir() / "compare.png"), full_page=True)
    page.set_viewport_size({"width": 375, "height": 800})  # a phone: one column, no sideways scroll
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    page.screenshot(path=str(output_dir() / "compare-narrow.png"), full_page=True)
    assert axe_violations(page) == []


def test_without_the_candidates_right_the_answer_is_still_shown(
    page: Any, server: Server, guard: Guard
) -> None:
    """A server that refuses ``return_candidates`` for this key (per-key rights): the page
    asks again without it and says why the candidates are missing."""
    guard.expected += ["401", "403"]

    def refuse_candidates(route: Any) -> None:
        body = json.loads(route.request.post_data or "{}")
        if body.get("aligntime", {}).get("return_candidates"):
            error = {
                "message": "this key may not see candidates",
                "type": "permission_error",
                "param": "aligntime.return_candidates",
                "code": "candidates_forbidden",
            }
            route.fulfill(status=403, json={"error": error})
        else:
            route.continue_()

    page.route("**/v1/chat/completions", refuse_candidates)
    page.goto(server.url + "/")
    use_key(page, USER_KEY)
    ask(page, FEVER)
    page.wait_for_function("() => document.querySelector('#pA .note') !== null")
    assert "may not see the candidates" in page.text_content("#pA .note")
    assert page.text_content("#pA .answer")
    assert page.eval_on_selector_all("#pA li.cand", "els => els.length") == 0


def test_audit_refuses_a_key_without_the_audit_right(
    page: Any, server: Server, guard: Guard
) -> None:
    guard.expected += ["401", "403"]
    page.goto(server.url + "/audit")
    use_key(page, USER_KEY)
    # The page asked once without a key as it loaded (a 401 alert); the key's answer
    # replaces that alert, and waiting for any alert could read the first one.
    alert = page.wait_for_selector("#audit-list [role=alert][data-refused='403']")
    assert "may not read the audit log" in alert.text_content()
    assert page.eval_on_selector_all("#audit-list table", "els => els.length") == 0
    # The API says the same, and nothing without a key at all.
    url = server.url + "/v1/aligntime/audit"
    assert httpx.get(url, headers={"Authorization": f"Bearer {USER_KEY}"}).status_code == 403
    assert httpx.get(url).status_code == 401


def test_audit_lists_filters_and_opens_requests_for_the_auditor(
    page: Any, server: Server, guard: Guard
) -> None:
    api_completion(server, "helpful", "Audit me: " + FEVER, 3)  # at least one with a failure
    guard.expected.append("401")
    page.goto(server.url + "/audit")
    use_key(page, AUDIT_KEY)
    page.wait_for_selector("#audit-list tbody tr")
    page.check("input[name=flag][value=gate_failure]")
    page.click("#audit-form button[type=submit]")
    page.wait_for_selector("#audit-list tbody tr")
    rows = page.eval_on_selector_all("#audit-list tbody tr", "rs => rs.map(r => r.textContent)")
    assert rows and all("failed gate" in r for r in rows)
    page.click("#audit-list tbody tr button")
    page.wait_for_selector("#audit-detail li.cand")
    detail = page.eval_on_selector_all(
        "#audit-detail li.cand", "cs => cs.map(c => c.querySelector('.badge').textContent)"
    )
    assert any("Chosen" in b for b in detail) and any("Failed gate" in b for b in detail)
    page.screenshot(path=str(output_dir() / "audit.png"), full_page=True)
    assert axe_violations(page) == []
    page.set_viewport_size({"width": 375, "height": 800})
    page.emulate_media(color_scheme="dark")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0  # the list scrolls inside its own region; the page does not
    page.screenshot(path=str(output_dir() / "audit-narrow-dark.png"), full_page=True)
    assert axe_violations(page) == []


def test_reports_are_listed_and_opened(page: Any, server: Server, guard: Guard) -> None:
    guard.expected.append("401")
    page.goto(server.url + "/reports")
    use_key(page, USER_KEY)
    page.click("button[data-report='fever-eval']")
    page.wait_for_selector("#report-detail figure img")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#report-detail img')].every(i => i.complete "
        "&& i.naturalWidth > 0) && document.querySelectorAll('#report-detail img').length >= 4"
    )
    strategies = page.eval_on_selector_all(
        "#report-detail table caption + thead + tbody tr",
        "rs => rs.map(r => r.cells[0].textContent)",
    )
    assert sorted(set(strategies)) == ["best_of_n", "vote"]
    assert page.eval_on_selector_all("#report-detail li.cand", "els => els.length") > 0
    page.screenshot(path=str(output_dir() / "reports.png"), full_page=True)
    assert axe_violations(page) == []


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_keyboard_only_with_visible_focus_in_both_themes(
    page: Any, server: Server, guard: Guard, theme: str
) -> None:
    guard.expected.append("401")
    page.emulate_media(color_scheme=theme)
    page.goto(server.url + "/")
    assert page.get_attribute("html", "data-theme") == theme
    # From the top of the page with Tab alone: the skip link, then on to the key field.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "api-key":
            break
    assert page.evaluate("document.activeElement.id") == "api-key"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", "")
    page.keyboard.type(USER_KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector("#pA-policy option[value='helpful']", state="attached")
    page.focus("#pA-policy")
    page.keyboard.press("Home")  # the first policy: helpful (sorted)
    while page.evaluate("document.activeElement.id") != "prompt":
        page.keyboard.press("Tab")
    page.keyboard.type("How do I boil an egg?")
    page.keyboard.press("Control+Enter")
    wait_for_candidates(page, 3)
    page.screenshot(path=str(output_dir() / f"playground-{theme}.png"), full_page=True)
    assert axe_violations(page) == []


def test_the_guard_catches_a_request_to_another_host(page: Any, guard: Guard) -> None:
    """The check every test relies on can fail: a page without the playground's CSP asks
    another host, and the router records and aborts it (nothing leaves the machine)."""
    guard.expected.append("ERR_FAILED")  # the aborted image's console error
    page.set_content('<img src="http://offsite.invalid/pixel.png" alt="">')
    page.wait_for_function("() => document.querySelector('img').complete")
    assert guard.foreign == ["http://offsite.invalid/pixel.png"]
    guard.foreign.clear()  # provoked on purpose: the teardown check must not fail on it
