"""Window/level latency of the built-in viewer: from the mouse move to the new image drawn.

Headless Chromium (Playwright) opens a 512x512 CT series of a running node in the viewer at ``/`` and performs
window drags; for each drag, the time from the pointer event of its last move to the drawing of the image rendered
with that window. The viewer measures it itself (``window.__dcmnodeDraws``: each draw with the input event's
timestamp), so the figure includes the throttling, the request, the server's render, the decoding and the draw,
but not the compositor's next frame (at most one more frame, 16 ms at 60 Hz). Every drag ends on a window not
asked for before (also in an earlier run), so the server renders it: its render cache does not answer. Usage::

    python -c "from tests.factories import ct_series, write_series; from pathlib import Path; \\
        write_series(Path('/tmp/ct512'), ct_series(40, 512, 512, phantom=True))"
    dcmnode import --data /tmp/viewer-bench /tmp/ct512
    dcmnode serve --data /tmp/viewer-bench --http-port 18095 --dimse-port 18195 &
    python bench/bench_viewer.py --base http://127.0.0.1:18095
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import urllib.request
from typing import Any

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]


def qido(base: str, path: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"{base}/dicom-web/{path}", headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        result: list[dict[str, Any]] = json.load(response)
        return result


def find_series(base: str, size: int) -> tuple[str, str]:
    """The first CT series whose instances have ``size`` rows."""
    for study in qido(base, "studies?ModalitiesInStudy=CT&limit=100"):
        study_uid = study["0020000D"]["Value"][0]
        for series in qido(base, f"studies/{study_uid}/series?Modality=CT"):
            series_uid = series["0020000E"]["Value"][0]
            first = qido(base, f"studies/{study_uid}/series/{series_uid}/instances?limit=1")
            if first and first[0].get("00280010", {}).get("Value", [0])[0] == size:
                return study_uid, series_uid
    sys.exit(f"no {size}x{size} CT series on {base}: import one first (see this file's docstring)")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="http://127.0.0.1:18095", help="the node's HTTP URL")
    parser.add_argument("--drags", type=int, default=50)
    parser.add_argument("--size", type=int, default=512, help="rows of the CT series to open")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    base = args.base.rstrip("/")
    study, series = find_series(base, args.size)

    from playwright.sync_api import sync_playwright

    latencies: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/#/viewer/{study}/{series}", wait_until="domcontentloaded")
        page.wait_for_function("() => window.__dcmnodeLastDraw", timeout=30_000)
        page.wait_for_timeout(500)  # let the neighbour prefetch end: it is not what is measured
        box = page.locator(".pane canvas").bounding_box()
        assert box is not None
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        # One unmeasured drag by a random amount first: a second run starts from another window, so the node's
        # render cache holds none of the windows it asks for.
        shift = random.randint(1, 300)
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + shift, y + shift / 3, steps=2)
        page.mouse.up()
        page.wait_for_timeout(300)
        for n in range(args.drags):
            # Alternate directions with growing steps: the window wanders without coming back to an earlier value.
            sign = 1 if n % 2 == 0 else -1
            dx, dy = sign * (24 + 2 * n), -sign * (12 + n)
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + dx, y + dy, steps=4)
            page.mouse.up()
            wanted = page.evaluate("() => window.dcmnodeViews.viewer.active.windowParam()")
            record = page.wait_for_function(
                "w => (window.__dcmnodeDraws || []).find(d => d.window === w && d.latency !== null)",
                arg=wanted,
                timeout=30_000,
                polling=10,
            ).json_value()
            latencies.append(float(record["latency"]))
            page.wait_for_timeout(150)  # a pause between drags, as a reader makes
        browser.close()
    if errors:
        sys.exit(f"page errors: {errors}")
    p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
    print(
        f"| viewer window drag → new image drawn ({args.size}x{args.size} CT, {len(latencies)} drags) "
        f"| p50 {p50:.0f} ms | p95 {p95:.0f} ms | max {max(latencies):.0f} ms |"
    )


if __name__ == "__main__":
    main()
