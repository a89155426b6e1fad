"""Re-take the screenshots docs/explore.md shows, from the demo's own systems.

Runs the `explore` command `make demo` prints at its end (the ensemble against seed 0 on the synthetic
dev-test split), opens its pages in Debian's headless Chromium through Playwright and saves queries.png,
query.png (the worst query of the ensemble), clip.png (that query's first clip) and summary.png.

    make demo && make screenshots          # or: python scripts/screenshots.py demo-work docs/explore

Needs `apt-get install chromium` and `pip install playwright` (DCASE_T6_CHROMIUM names another binary).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

SPLIT = "synthetic/development-testing"
VIEWPORT = {"width": 1280, "height": 860}
CHROMIUM = Path(os.environ.get("DCASE_T6_CHROMIUM", "/usr/bin/chromium"))


def newest_run(workdir: Path, name: str) -> str:
    """The id of the newest finished run called ``name`` (make demo may have run more than once)."""
    listed = subprocess.run([sys.executable, "-m", "dcase_t6", "--workdir", str(workdir), "runs", "list", "--json"],
                            check=True, capture_output=True, text=True).stdout
    runs = [run for run in json.loads(listed) if run["status"] == "finished" and run["id"].startswith(f"{name}-")]
    if not runs:
        sys.exit(f"{workdir}: no finished run named {name}; run `make demo` first")
    return max(runs, key=lambda run: run["created"])["id"]


def explore_command(demo: Path) -> list[str]:
    """The command the demo prints: the ensemble against seed 0, with the clips' audio and captions."""
    data, workdir = demo / "data", demo / "work"
    ensemble = demo / "out" / "ensemble_devtest.csv"
    if not ensemble.is_file():
        sys.exit(f"{ensemble}: missing; run `make demo` first")
    return [sys.executable, "-m", "dcase_t6", "--workdir", str(workdir), "explore", "-p", f"ensemble={ensemble}",
            "-p", f"seed0={newest_run(workdir, 'demo-seed0')}:{SPLIT}",
            "-r", str(data / "relevance" / "synthetic" / "development-testing.csv"),
            "--audio", str(data / "synthetic" / "audio" / "evaluation"),
            "--clip-captions", str(data / "synthetic" / "clotho_captions_evaluation.csv"), "--json"]


def take(url: str, out: Path) -> None:
    """Open each page the way a user would and save its screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        page.wait_for_function("performance.getEntriesByName('queries-rendered').length > 0")
        page.wait_for_function("document.querySelector('figure.scatter img').naturalWidth > 0")
        page.screenshot(path=str(out / "queries.png"))
        worst = page.locator("#queries tbody tr").first.get_attribute("data-query")
        page.locator(f'#queries tbody tr[data-query="{worst}"] td.text a').click()
        page.wait_for_url(re.compile(rf"/query/{worst}\.html$"))
        page.wait_for_load_state("load")
        page.screenshot(path=str(out / "query.png"))
        page.locator('section.ranking[data-system="0"] a.clip-link').first.click()
        page.wait_for_url(re.compile(r"/clip/\d+\.html$"))
        page.screenshot(path=str(out / "clip.png"))
        page.click("#nav-summary")
        page.wait_for_url(re.compile(r"/summary\.html$"))
        page.wait_for_function("[...document.images].every(image => image.complete && image.naturalWidth > 0)")
        page.screenshot(path=str(out / "summary.png"))
        browser.close()


def main() -> None:
    demo = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-work")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/explore")
    out.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(explore_command(demo), stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or lines[-1] != "}\n":  # `explore --json` prints one indented object once it listens
            line = server.stdout.readline()
            if not line:
                sys.exit("explore ended before it listened (its message is above)")
            lines.append(line)
        take(json.loads("".join(lines))["url"], out)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"saved queries.png, query.png, clip.png, summary.png in {out}")


if __name__ == "__main__":
    main()
