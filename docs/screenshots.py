"""Screenshot a page with headless Chromium (the same helper the report-rendering test uses).

Run by hand from the repository root, for the docs:

    .venv/bin/python docs/screenshots.py URL OUTPUT.png [--width 1280] [--height 900]
        [--settle 3] [--full-page]

URL is http(s):// or file://; a plain path to a local file also works. The shot is taken after the
load event, once the network has been quiet for half a second (or after a minute, for pages that
keep polling), plus --settle seconds for scripts to draw. Examples:

    # a run's HTML report, the whole page
    .venv/bin/python docs/screenshots.py $LMFORGE_STORE/runs/<run-id>/report/report.html \\
        docs/img/report.png --full-page
    # the Prefect UI's page for one flow run (`prefect server start` serves it on port 4200);
    # a single-page app, so give it a few seconds to fetch and draw
    .venv/bin/python docs/screenshots.py http://127.0.0.1:4200/runs/flow-run/<flow-run-id> \\
        docs/img/flow-run.png --width 1440 --height 1000 --settle 5

Chromium is found on PATH (chromium, chromium-browser, google-chrome) or named by
$LMFORGE_CHROMIUM; on Debian: `apt-get install --no-install-recommends chromium`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.browser import find_chromium, screenshot  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http(s):// or file:// URL, or a local file path")
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    parser.add_argument("--height", type=int, default=900, help="viewport height in CSS pixels")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after network idle")
    parser.add_argument("--full-page", action="store_true", help="the whole page, not just the viewport")
    args = parser.parse_args(argv)
    executable = find_chromium()
    if executable is None:
        parser.error("no Chromium found: install it or set LMFORGE_CHROMIUM")
    url = args.url if "://" in args.url else Path(args.url).resolve().as_uri()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    screenshot(url, args.output, executable, args.width, args.height, args.settle, args.full_page)
    print(f"wrote {args.output} ({args.width}x{args.height}) from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
