"""A real headless Chromium for the chat page's test, from Debian's packages.

What is it for? The gateway's chat page (`/`) is JavaScript that only a browser runs:
the test drives Debian's `chromium` through `chromedriver` with selenium. A fresh
machine has neither, so `ensure_chromium` installs the packages `chromium` and
`chromium-driver` with apt-get when this process is root (`dev.services.debian`, as the
stack installs `redis-server`), and otherwise names the command to run.

`headless_chromium` starts one browser with a fresh profile. Selenium is given the
driver's path, so its selenium-manager never tries to download a driver or a browser
(the machines reach package registries only). The flags keep Chromium off the network
beyond the pages the test opens: no sync, component updates, QUIC or first-run calls.

From a shell: ``python -m dev.browser`` installs what is missing and prints the paths.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dev.services.debian import ensure_programs
from dev.services.state import ServiceError

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["CHROMIUM_FLAGS", "ensure_chromium", "headless_chromium", "main"]

CHROMIUM_FLAGS = (
    "--headless=new",
    # Root in a container has no user namespace for the sandbox; the pages are our own.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # /dev/shm is small in containers; Chromium's renderers then crash on larger pages.
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
)


def ensure_chromium() -> tuple[str, str]:
    """The paths of `chromium` and `chromedriver`, installed with apt-get if missing."""
    chromium, driver = ensure_programs(
        ["chromium", "chromedriver"], packages=["chromium", "chromium-driver"], service="browser"
    )
    return chromium, driver


def headless_chromium(
    *, profile_dir: Path | None = None, page_load_timeout_s: float = 30.0
) -> WebDriver:
    """A headless Chromium driven by selenium, its profile in `profile_dir` (an empty
    dir; default: a new temporary one). The caller quits it (``driver.quit()``)."""
    # Imported here: selenium is a test dependency (the dev extra), not the stack's.
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    chromium, driver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    if profile_dir is None:
        profile_dir = Path(tempfile.mkdtemp(prefix="chatlog-chromium-"))
    options.add_argument(f"--user-data-dir={profile_dir}")
    # The console's messages (`browser.get_log("browser")`): a page error or a refused
    # script (CSP) shows there, so a test can fail on it.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    browser.set_page_load_timeout(page_load_timeout_s)
    return browser


def main() -> int:
    """Install what is missing (root) and print the two paths; 1 with the reason if not."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        chromium, driver = ensure_chromium()
    except ServiceError as exc:
        print(f"dev.browser: {exc}", file=sys.stderr)
        return 1
    print(f"chromium {chromium}\nchromedriver {driver}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
