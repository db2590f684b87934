"""What the browser tests share: finding a Chromium, where screenshots go, reading pages.

The tests drive the system's Chromium (Debian's `chromium` package) through Playwright's
`executable_path`; Playwright's own browser download is never used. Without a Chromium every
browser test is skipped with the reason below (scripts/test.sh says so before pytest too).
"""

from __future__ import annotations

import os
import shutil
from html import escape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_REASON = "no Chromium found (apt-get install chromium, or set CHROMIUM to its path)"


def chromium_path() -> str | None:
    """$CHROMIUM if set, else `chromium` or `chromium-browser` on the PATH (scripts/test.sh looks the same way)."""
    configured = os.environ.get("CHROMIUM", "")
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


requires_chromium = pytest.mark.skipif(chromium_path() is None, reason=SKIP_REASON)


def screenshot_dir(tmp_path: Path) -> Path:
    """docs/screenshots (or wherever BROWSER_SCREENSHOTS points) when asked, else the test's tmp dir,
    so a CI run never writes into the checkout."""
    configured = os.environ.get("BROWSER_SCREENSHOTS", "")
    if not configured:
        return tmp_path
    path = Path(configured)
    return path if path.is_absolute() else ROOT / path


def html_forms(text: str) -> set[str]:
    """The ways `text` can appear in a page's HTML: as is and HTML-escaped ("Duka &amp; Gas")."""
    return {text, escape(text), escape(text, quote=False)}
