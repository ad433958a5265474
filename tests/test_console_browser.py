"""The console in a real headless Chromium (Debian's, driven by Playwright) against a real
``oasst serve``: sign in, replay a tree with the slider, mark a spammer after the preview and see
the board change, undo, process a flagged message, and an action refused without its CSRF token.
It takes the README's screenshots on the way: into the test's temporary folder, or into
docs/screenshots/ with ``OASST_UPDATE_SCREENSHOTS=1`` (so a plain run leaves the checkout clean)."""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from devkit.simulator import seed_history
from tests.servers import oasst_serve

KEY = "console-test-key"
README_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
SHOTS = Path(tempfile.gettempdir()) / "oasst-console-screenshots"  # a plain run's screenshots


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A seeded SQLite store (12 trees, 16 users: a spammer, a troll, reports) behind ``oasst serve``."""
    data = tmp_path_factory.mktemp("console")
    with ThreadPoolExecutor(1) as pool:  # a thread of its own: Playwright's loop runs in this one
        pool.submit(seed_history, f"sqlite:///{data}/oasst.sqlite3", trees=12, users=16, seed=3, api_key=KEY).result()
    with oasst_serve(data, KEY) as api:
        yield api, httpx.Client(base_url=api, headers={"X-API-Key": KEY}, timeout=10)


@pytest.fixture
def page(browser, served):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    api, _ = served
    page.goto(api.replace("/api/v1", "/console/"))
    assert "/console/sign-in" in page.url  # no session yet
    page.fill("#api_key", KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("text=Tree-state funnel")
    yield page
    context.close()


def shot(page, name: str) -> None:
    """A screenshot of the page, checked to be a PNG; the README's copy only when asked to update it."""
    folder = README_SCREENSHOTS if os.environ.get("OASST_UPDATE_SCREENSHOTS") == "1" else SHOTS
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"))
    assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def log_head(api: httpx.Client) -> int:
    return api.get("/events", params={"after": 0, "limit": 10_000}).json()["last_position"]


def test_sign_in_and_replay_a_tree_with_the_slider(page, served):
    _, api = served
    assert page.locator("#funnel").is_visible() and page.locator("#lags").is_visible()
    shot(page, "overview")
    trees = api.get("/stats/tree_manager/message_counts", params={"only_active": False}).json()
    tree = max((t for t in trees if t["state"] == "ready_for_export"), key=lambda t: t["count"])
    page.goto(page.url.rstrip("/") + f"/trees/{tree['message_tree_id']}")
    latest = page.locator("#tree .msg").count()
    assert latest >= 3 and page.locator("#state").inner_text() == "ready_for_export"
    shot(page, "tree")
    with page.expect_navigation():
        page.locator("#slider").fill("3")  # scrub back: the inline script submits the form
    assert "step=3" in page.url
    assert page.locator("#tree .msg").count() < latest
    assert page.locator("#state").inner_text() != "ready_for_export"
    position = int(page.locator("#position").inner_text())
    page.click("a[rel=next]")  # reading without the script: the next event's deep link
    assert int(page.locator("#position").inner_text()) > position and "at=" in page.url


def _busiest_ranked_annotator(api: httpx.Client) -> dict:
    """A user on the board whose spam mark would re-decide the most."""
    board = api.get("/leaderboards/total", params={"max_count": 100}).json()["leaderboard"]
    previews = [api.get(f"/admin/users/{row['user_id']}/spammer/preview").json() for row in board]
    return max(previews, key=lambda p: len(p["decisions"]))


def test_mark_a_spammer_after_the_preview_see_the_board_change_and_undo(page, served):
    _, api = served
    preview = _busiest_ranked_annotator(api)
    user = preview["user_id"]
    on_board = f'#leaderboard a[href="/console/users/{user}"]'
    console = page.url.rstrip("/")
    page.goto(f"{console}/boards")
    assert page.locator(on_board).count() == 1
    page.goto(f"{console}/users/{user}")
    page.click("#preview-mark")
    assert page.locator("#preview").is_visible() and page.locator("#board-effect").is_visible()
    assert int(page.locator("#flips").inner_text()) == preview["acceptances_flipped"]
    shot(page, "user")
    before = log_head(api)
    page.click("#confirm")
    assert page.locator("#spammer").is_visible() and "Marked spammer" in page.inner_text("[role=status]")
    assert log_head(api) > before  # the mark and the re-decisions it set off
    page.goto(f"{console}/boards")
    assert page.locator(on_board).count() == 0  # off the leaderboard
    shot(page, "boards")
    page.goto(f"{console}/users/{user}")
    page.click("#undo")
    assert page.locator("#spammer").count() == 0 and "undone" in page.inner_text("[role=status]")
    page.goto(f"{console}/boards")
    assert page.locator(on_board).count() == 1


def test_process_a_flagged_message_and_refuse_an_action_without_csrf(page, served):
    _, api = served
    page.goto(page.url.rstrip("/") + "/flagged")
    rows = page.locator("#flagged tr[data-message]")
    assert rows.count() >= 2
    shot(page, "flagged")
    first = rows.first.get_attribute("data-message")
    rows.first.locator("text=Processed").click()
    assert "Taken off the moderation queue" in page.inner_text("[role=status]")
    assert page.locator(f'#flagged tr[data-message="{first}"]').count() == 0
    queue = api.get("/admin/flagged_messages", params={"max_count": 1000}).json()
    assert next(f for f in queue if f["message_id"] == first)["processed"] is True

    second = page.locator("#flagged tr[data-message]").first
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    before = log_head(api)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        second.locator("text=Processed").click()
    assert answer.value.status == 403 and "CSRF" in page.inner_text("[role=alert]")
    assert log_head(api) == before  # nothing appended
