"""Screenshot report pages in a real browser: headless Chromium renders each report.html to a PNG.

    python tools/screenshot_reports.py RUN_DIR/report.html MC_DIR/report.html --out /tmp/shots

A documented, scripted step (docs/report.md), not a test: CI does not install Chromium. The tests
check the pages' content with html.parser; this checks that a browser lays them out as meant
(look at the PNGs). Each page is shot twice: the top of the page at a laptop's size (what an
operator sees first: the verdict) and the whole page in one tall image.

Chromium: ``apt-get install -y chromium`` (Debian), or set CHROMIUM to its path. The pages are
self-contained, so the browser runs with the network off (--no-proxy-server and no remote fonts
or scripts are fetched); a page that needed the network would show it in the picture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: (suffix, window size) of each screenshot: the first screen and the whole page.
SHOTS = (("top", (1366, 900)), ("full", (1366, 4200)))
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str:
    given = os.environ.get("CHROMIUM")
    if given:
        return given
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    sys.exit(
        "screenshot_reports: error: no Chromium found (apt-get install -y chromium, or set "
        "CHROMIUM to its path)"
    )


def screenshot(browser: str, page: Path, png: Path, size: tuple[int, int]) -> None:
    """One headless Chromium screenshot of ``page`` at window ``size`` (px) into ``png``."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shot-profile-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",  # root in a container has no user namespace for the sandbox
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-proxy-server",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--screenshot={png}",
            page.resolve().as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.exists():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"screenshot_reports: error: {page}: chromium failed: {tail}")


def name_for(page: Path) -> str:
    """A PNG name that says which page it is: the run or campaign directory's name."""
    return page.resolve().parent.name or page.stem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pages", nargs="+", type=Path, help="report.html files to screenshot")
    ap.add_argument("--out", type=Path, default=Path("/tmp/report_shots"), help="PNG directory")
    args = ap.parse_args(argv)
    browser = find_browser()
    for page in args.pages:
        if not page.is_file():
            sys.exit(f"screenshot_reports: error: {page}: no such file")
        for suffix, size in SHOTS:
            png = args.out / f"{name_for(page)}-{suffix}.png"
            screenshot(browser, page, png, size)
            print(f"wrote {png} ({size[0]} x {size[1]} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
