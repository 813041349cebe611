"""Screenshot of the web view on the embedded default model, for the README (docs/web_view.png).

Starts `halluwatch serve` in-process on a free loopback port, drives Debian's chromium with
Playwright (no browser download), generates once and saves the page.

    python bench/screenshot.py ["What is the capital of France?"]
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import adapters  # noqa: E402,F401  (preloads OpenBLAS before mlx)
from support.live_server import live_server  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from app.engine import Engine  # noqa: E402
from app.http.app import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    prompt = sys.argv[1] if len(sys.argv) > 1 else "What is the capital of France?"
    engine = Engine("default")
    engine.start()
    out = ROOT / "docs" / "web_view.png"
    with live_server(create_app(Settings(), engine)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url + "/")
        page.wait_for_selector("#model-info .model-id")
        page.fill("#prompt", prompt)
        page.fill("#max-tokens", "48")
        page.click("#generate")
        page.wait_for_selector("body[data-state='done']", timeout=300_000)
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    engine.stop()
    print(out)


if __name__ == "__main__":
    main()
