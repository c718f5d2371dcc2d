"""Take the Dagster UI screenshots in docs/images/ (headless Chromium over the DevTools protocol).

make dev &   # with the demo's instance
python docs/tools/screenshots.py   # needs Debian's chromium: apt-get install chromium
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import websocket

UI = "http://127.0.0.1:3000"
OUT = Path(__file__).resolve().parents[1] / "images"
PAGES = {
    "asset-graph.png": "/asset-groups",
    "content-group.png": "/locations/influencer_pipeline/asset-groups/content",
    "training-images.png": "/assets/training_images?partition=ava&view=events",
    "lora-weights.png": "/assets/lora_weights?partition=ava&view=events",
    "post-videos.png": "/assets/post_videos?view=events",
    "runs.png": "/runs",
}
DISMISS = """(() => { for (const b of document.querySelectorAll('button')) {
  if (['Skip', 'Dismiss', 'Close'].includes(b.innerText.trim())) { b.click(); } } })()"""
EXPAND = """(() => { for (const e of document.querySelectorAll('button, a, span, div')) {
  if (e.childElementCount === 0 && (e.innerText || '').trim() === '[Show Markdown]') { e.click(); break; } } })()"""


class Tab:
    def __init__(self, port: int) -> None:
        target = requests.put(f"http://127.0.0.1:{port}/json/new?about:blank", timeout=10).json()
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60)
        self.counter = 0

    def call(self, method: str, **params: object) -> dict:
        self.counter += 1
        self.ws.send(json.dumps({"id": self.counter, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.counter:
                return message.get("result", {})


def main() -> None:
    port = 9333
    profile = tempfile.mkdtemp()
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    browser = subprocess.Popen(
        [
            "chromium",
            *flags.split(),
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}",
            "--window-size=1600,1000",
            "--hide-scrollbars",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)
        tab = Tab(port)
        tab.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
        for name, path in PAGES.items():
            tab.call("Page.navigate", url=UI + path)
            time.sleep(8)
            tab.call("Runtime.evaluate", expression=DISMISS)
            time.sleep(1)
            tab.call("Runtime.evaluate", expression=EXPAND)
            time.sleep(2)
            shot = tab.call("Page.captureScreenshot", format="png")
            (OUT / name).write_bytes(base64.b64decode(shot["data"]))
            print(f"wrote {OUT / name}")
    finally:
        browser.terminate()


if __name__ == "__main__":
    sys.exit(main())
