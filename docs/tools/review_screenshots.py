"""Take the review screenshots in docs/images/ (studio, the review_posts run, published_posts) after `make demo`.

make dev &      # the Dagster UI on :3000
make studio &   # the studio on :3001
python docs/tools/review_screenshots.py   # Debian's chromium; the same DevTools driver as screenshots.py
"""

from __future__ import annotations

import base64
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import DISMISS, EXPAND, OUT, UI, Tab

STUDIO = "http://127.0.0.1:3001/studio"
LATEST = """query { runsOrError(filter: {pipelineName: "%s"}, limit: 1) { ... on Runs { results { runId
  tags { key value } } } } }"""


def latest_run(job: str) -> dict:
    answer = requests.post(f"{UI}/graphql", json={"query": LATEST % job}, timeout=30).json()
    [run] = answer["data"]["runsOrError"]["results"]
    return {"id": run["runId"], "tags": {t["key"]: t["value"] for t in run["tags"]}}


def shoot(tab: Tab, url: str, name: str, height: int, settle: float, clicks: tuple[str, ...] = ()) -> None:
    tab.call("Emulation.setDeviceMetricsOverride", width=1600, height=height, deviceScaleFactor=1, mobile=False)
    tab.call("Page.navigate", url=url)
    time.sleep(settle)
    tab.call("Runtime.evaluate", expression=DISMISS)
    for script in clicks:
        tab.call("Runtime.evaluate", expression=script)
        time.sleep(2)
    shot = tab.call("Page.captureScreenshot", format="png")
    (OUT / name).write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {OUT / name}")


def main() -> None:
    port = 9334
    profile = tempfile.mkdtemp()
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    browser = subprocess.Popen(
        ["chromium", *flags.split(), f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
         "--window-size=1600,1200", "--hide-scrollbars"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(3)
        tab = Tab(port)
        review = latest_run("review_posts")
        publish = latest_run("publish_posts")
        partition = publish["tags"].get("dagster/partition", "")
        shoot(tab, STUDIO, "studio.png", 1250, 6)
        shoot(tab, f"{UI}/runs/{review['id']}", "review-run.png", 1000, 10)
        events = f"{UI}/assets/published_posts?view=events&partition={requests.utils.quote(partition)}"
        shoot(tab, events, "published-posts.png", 1100, 10, (EXPAND,))
    finally:
        browser.terminate()
        browser.wait(10)


if __name__ == "__main__":
    main()
