"""A real headless browser for page tests: Debian's chromium (``make browser`` installs it),
driven by Playwright's Python API. Playwright's own browser builds are never downloaded."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright

INSTALL_HINT = "Debian's chromium is missing: run `make browser` (.ci/install-chromium)"


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, INSTALL_HINT  # a missing browser fails the page tests, never skips them
    return path


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
