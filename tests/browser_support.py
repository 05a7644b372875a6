"""A real browser for page tests: headless Chromium from Debian's packages, driven by
Selenium through Debian's matching chromedriver.

`chromium_session(name)` (a context manager) and the `browser` fixture start one Chromium
with bounded timeouts and hand back a `Browser` (the Selenium driver plus `screenshot`,
which saves PNGs under test-artefacts/ at the repository root, git-ignored). Nothing is
downloaded at test time: Selenium is given /usr/bin/chromedriver and /usr/bin/chromium, so
Selenium Manager never runs. If they are missing and we are root (CI on a fresh machine),
scripts/install-browser-deps installs them with apt-get first; otherwise the test is
skipped with the command to run.

Other page tests (the consent page, the portal) use it the same way:
`from browser_support import browser  # noqa: F401` and take `browser` as an argument.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTEFACTS = ROOT / "test-artefacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_TIMEOUT_S = 900.0  # apt-get update and install, on a slow mirror
PAGE_LOAD_TIMEOUT_S = 30.0
SCRIPT_TIMEOUT_S = 10.0
WINDOW = (1400, 1800)

__all__ = ["ARTEFACTS", "Browser", "browser", "chromium_session", "ensure_browser", "wait_for"]


def ensure_browser() -> None:
    """Chromium and chromedriver present, installing them (as root) if not; skip otherwise."""
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return
    if os.geteuid() != 0:
        pytest.skip("no Chromium: run scripts/install-browser-deps as root (apt-get install chromium chromium-driver)")
    done = subprocess.run(
        [str(ROOT / "scripts" / "install-browser-deps")],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0 and CHROMIUM.is_file() and CHROMEDRIVER.is_file(), (
        f"scripts/install-browser-deps failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )


@dataclass
class Browser:
    driver: Any  # selenium.webdriver.Chrome
    name: str

    def screenshot(self, label: str) -> Path:
        """Saves the current page as test-artefacts/<name>-<label>.png; returns the path."""
        ARTEFACTS.mkdir(exist_ok=True)
        path = ARTEFACTS / f"{self.name}-{label}.png"
        assert self.driver.save_screenshot(str(path)), f"could not save {path}"
        return path

    def console_errors(self) -> list[dict[str, Any]]:
        """The browser's SEVERE console entries since the last call (CSP violations among them)."""
        return [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]


@contextmanager
def chromium_session(name: str) -> Iterator[Browser]:
    ensure_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="quickpay-chromium-")
    for arg in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # /dev/shm is small in containers
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        driver.set_script_timeout(SCRIPT_TIMEOUT_S)
        yield Browser(driver, name)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Browser]:
    """A fresh headless Chromium per test; screenshots are named after the test."""
    name = request.node.name.removeprefix("test_").replace("[", "-").replace("]", "")
    with chromium_session(name) as session:
        yield session


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
    """Polls `condition` until it returns something truthy (returned) or timeout_s passes."""
    import time

    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the page may be between renders
            last_error = exc
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last error: {last_error!r})")
