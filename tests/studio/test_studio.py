"""The studio (issue 13, item 4): one page listing every persona, served by the token-guarded webserver, checked in
a real headless Chromium.

The wrapper (`python -m influencer_pipeline.admin.webserver_auth`) runs for real on loopback with this code location
and a scratch instance, media store, post ledger and outbox. The run coordinator is Dagster's default, so a run
launched over GraphQL (as n8n launches review_posts) executes without a daemon.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import imageio_ffmpeg
import pytest
import requests
from PIL import Image

from influencer_pipeline.content.plan import ContentPlan, PlannedPost
from influencer_pipeline.media import LocalMediaStore
from influencer_pipeline.publishing import review
from influencer_pipeline.publishing.due import day_statuses
from influencer_pipeline.publishing.ledger import Ledger, default_url
from influencer_pipeline.publishing.review import PlanEntry
from influencer_pipeline.studio.overview import Failure, build_overview
from influencer_pipeline.studio.page import render
from tests.support.services import free_port, unavailable
from tests.support.waiting import wait_until
from tests.support.webserver import LAUNCH, stop, wait_until_up

ROOT = Path(__file__).resolve().parents[2]
TODAY = datetime.now(UTC).date()
TOMORROW = (TODAY + timedelta(days=1)).isoformat()
THUMB_RGB = (230, 20, 200)  # a colour no UI chrome uses: found in the screenshot only if the thumbnail rendered
# Runs start at once, launched by the webserver (no daemon needed); Dagster's default coordinator queues them.
INSTANCE = """run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""
HOSTILE = "<script>alert(1)</script> espresso & co"


def png(color: tuple[int, int, int], size: tuple[int, int] = (216, 270)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def mp4(path: Path) -> bytes:
    """A one-second 9:16 reel made by the real ffmpeg the pipeline uses."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi"]
    cmd += ["-i", "color=c=0x20c040:s=216x384:d=1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True, timeout=120)
    return path.read_bytes()


def seed(root: Path) -> LocalMediaStore:
    """Two personas as a creator leaves them: ava with a dataset, a LoRA and tomorrow's posts (an image post and
    a reel, registered for review); bob with a broken persona.yaml; and a folder whose name is not a persona."""
    store = LocalMediaStore(root / "media")
    store.write_bytes("uploads/ava/persona.yaml", b"display_name: Ava Stone\napproval: required\n")
    store.write_bytes("uploads/ava/01.jpg", png((90, 90, 90)))
    store.write_bytes("uploads/bob/persona.yaml", b"approvel: auto\n")
    store.write_bytes("uploads/My Persona/01.jpg", png((90, 90, 90)))
    images = [{"status": "kept"}] * 12 + [{"status": "rejected"}] * 2
    store.write_bytes(
        "personas/ava/manifests/training_images.json", f'{{"images": {images}}}'.replace("'", '"').encode()
    )
    store.write_bytes(
        "personas/ava/manifests/lora_weights.json",
        b'{"version": "3f9a0c1d2e4b5a6c", "trained_at": "2026-12-01T10:00:00+00:00"}',
    )
    prefix = f"personas/ava/content/{TOMORROW}/"
    publish = datetime.fromisoformat(TOMORROW).replace(tzinfo=UTC)
    posts = [
        PlannedPost(id=f"{TOMORROW}-1", theme="market", format="image", image_prompts=["ohwx woman"],
                    captions={"instagram": HOSTILE}, platforms=["instagram"], publish_at=publish.replace(hour=9)),
        PlannedPost(id=f"{TOMORROW}-2", theme="dance", format="reel", image_prompts=["ohwx woman dancing"],
                    captions={"instagram": "A reel", "tiktok": "A reel"}, platforms=["instagram", "tiktok"],
                    publish_at=publish.replace(hour=18), voiceover="One, two, dance."),
    ]  # fmt: skip
    plan = ContentPlan(persona="ava", date=date.fromisoformat(TOMORROW), posts=posts)
    store.write_bytes(prefix + "plan.json", plan.model_dump_json().encode())
    store.write_bytes(prefix + f"images/{TOMORROW}-1-1.png", png(THUMB_RGB))
    store.write_bytes(prefix + f"images/{TOMORROW}-2-1.png", png((30, 60, 200)))
    store.write_bytes(prefix + f"videos/{TOMORROW}-2-9x16.mp4", mp4(root / "reel.mp4"))
    (root / "secret.txt").write_text("outside the media root")
    (store.root / "personas" / "ava" / "leak.png").symlink_to(root / "secret.txt")
    ledger = Ledger(default_url(root / "work"))
    ledger.upgrade()
    entries = [PlanEntry(p.id, platform, p.publish_at) for p in posts for platform in p.platforms]
    now = datetime.now(UTC)
    review.register_day(ledger, "ava", TOMORROW, entries, approval="required", content_version="v1", now=now)
    review.approve(ledger, review.PostKey("ava", f"{TOMORROW}-2", "tiktok"), reviewer="test", now=now)
    ledger.dispose()
    return store


# -- the page's data and HTML, without a server


def test_the_overview_lists_personas_posts_and_invalid_folders(tmp_path: Path) -> None:
    store = seed(tmp_path)
    ledger = Ledger(default_url(tmp_path / "work"))
    failure = Failure(
        "persona_dataset", "abcdef1234", datetime(2026, 12, 5, tzinfo=UTC), "min_images: 3 < 10. Fix: add"
    )
    overview = build_overview(
        store, today=TODAY, statuses=lambda p, d: day_statuses(ledger, p, d), failures=lambda slugs: {"ava": failure}
    )
    assert [card.slug for card in overview.personas] == ["ava", "bob"]
    assert [folder.name for folder in overview.invalid_folders] == ["My Persona"]
    assert "lowercase" in overview.invalid_folders[0].problem or "Fix" in overview.invalid_folders[0].problem
    ava, bob = overview.personas
    assert (ava.name, ava.approval, ava.dataset) == ("Ava Stone", "required", "12 images kept, 2 rejected")
    assert "3f9a0c1d2e4b5a6c" in ava.lora and "2026-12-01" in ava.lora
    image, reel = ava.posts
    assert (image.state, image.image_key.endswith("-1-1.png"), image.video_key) == ("draft", True, "")
    assert reel.states == {"instagram": "draft", "tiktok": "scheduled"} and reel.state == "mixed"
    assert reel.video_key.endswith("-2-9x16.mp4")
    assert ava.failure == failure
    assert "approvel" in bob.problem and "approval" in bob.problem, "persona.yaml problems, with did-you-mean"
    html = render(overview)
    assert HOSTILE not in html and "&lt;script&gt;" in html, "captions are escaped"
    assert html.count("<video") == 1 and 'class="week-grid"' in html and "min_images" in html


# -- served by the real wrapper, looked at by a real browser


@dataclass(frozen=True)
class Studio:
    url: str
    token: str
    root: Path
    log: Path


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    root = tmp_path_factory.mktemp("studio")
    seed(root)
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    token = secrets.token_urlsafe(32)
    port = free_port()
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "MEDIA_ROOT": str(root / "media"),
        "WORK_DIR": str(root / "work"),
        "OUTBOX_DIR": str(root / "outbox"),
        "DAGSTER_GRAPHQL_TOKEN": token,
        "INFLUENCER_ACCOUNTS_DB": f"sqlite:///{root / 'accounts.db'}",
    }
    env.pop("POST_LEDGER_URL", None)
    cmd = [sys.executable, "-m", "influencer_pipeline.admin.webserver_auth", "-h", "127.0.0.1", "-p", str(port)]
    cmd += ["-w", str(ROOT / "workspace.yaml")]
    log = root / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc, log, timeout=300)
        yield Studio(url, token, root, log)
    finally:
        stop(proc)


def test_the_page_and_its_media_are_served_beside_the_ui(studio: Studio) -> None:
    page = requests.get(f"{studio.url}/studio", timeout=120)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Ava Stone" in page.text and "My Persona" in page.text and "week-grid" in page.text
    [video] = re.findall(r'<video[^>]* src="([^"]+)"', page.text)
    reel = requests.get(studio.url + video, headers={"Range": "bytes=0-99"}, timeout=60)
    assert (reel.status_code, reel.headers["content-type"], len(reel.content)) == (206, "video/mp4", 100)
    assert reel.headers["content-range"].startswith("bytes 0-99/")
    assert requests.get(f"{studio.url}/server_info", timeout=60).ok, "the UI is still served"


def test_a_day_is_served_as_json_for_the_approval_workflow(studio: Studio) -> None:
    answer = requests.get(f"{studio.url}/studio/day.json", params={"persona": "ava", "day": TOMORROW}, timeout=60)
    assert answer.status_code == 200, answer.text
    posts = {(p["post_id"], p["platform"]): p for p in answer.json()["posts"]}
    assert set(posts) == {(f"{TOMORROW}-1", "instagram"), (f"{TOMORROW}-2", "instagram"), (f"{TOMORROW}-2", "tiktok")}
    assert posts[(f"{TOMORROW}-1", "instagram")]["caption"] == HOSTILE
    assert posts[(f"{TOMORROW}-2", "tiktok")]["video_key"].endswith(".mp4")
    for params in ({"persona": "../ava", "day": TOMORROW}, {"persona": "ava", "day": "tomorrow"}):
        refused = requests.get(f"{studio.url}/studio/day.json", params=params, timeout=60)
        assert refused.status_code == 400 and "YYYY-MM-DD" in refused.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/studio/media/personas/ava/leak.png",  # a link out of the media root
        "/studio/media/personas/%2e%2e/%2e%2e/secret.txt",
        "/studio/media/personas/..%2f..%2fsecret.png",
        "/studio/media/uploads/ava/01.jpg",  # uploads are the creator's, not the page's
        "/studio/media/personas/ava/manifests/lora_weights.json",
    ],
)
def test_nothing_outside_the_rendered_media_is_served(studio: Studio, path: str) -> None:
    response = requests.get(studio.url + path, timeout=60)
    assert response.status_code == 404 and b"outside the media root" not in response.content


def test_the_same_guard_still_refuses_writes_without_the_token(studio: Studio) -> None:
    assert requests.post(f"{studio.url}/studio", timeout=60).status_code == 405
    body = {"query": LAUNCH, "variables": {"p": review_params({"persona": "ava", "day": TOMORROW, "posts": []})}}
    assert requests.post(f"{studio.url}/graphql", json=body, timeout=60).status_code == 401


def review_params(config: dict, tags: list[dict] | None = None) -> dict:
    return {
        "selector": {
            "repositoryLocationName": "influencer_pipeline",
            "repositoryName": "__repository__",
            "jobName": "review_posts",
        },
        "runConfigData": {"ops": {"record_decisions": {"config": config}}},
        "executionMetadata": {"tags": tags or []},
    }


def launch_and_wait(studio: Studio, params: dict) -> dict:
    body = {"query": LAUNCH, "variables": {"p": params}}
    response = requests.post(
        f"{studio.url}/graphql", json=body, headers={"Authorization": f"Bearer {studio.token}"}, timeout=120
    )
    launched = response.json()["data"]["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", response.text
    run_id = launched["run"]["runId"]
    query = "query R($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"

    def finished() -> str | None:
        reply = requests.post(f"{studio.url}/graphql", json={"query": query, "variables": {"id": run_id}}, timeout=60)
        status = reply.json()["data"]["runOrError"]["status"]
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    status = wait_until(
        finished, f"run {run_id} to finish", 300, interval=1, details=lambda: studio.log.read_text()[-3000:]
    )
    return {"id": run_id, "status": status}


def test_review_posts_launched_over_graphql_records_the_decision_and_the_studio_shows_it(studio: Studio) -> None:
    """What n8n does with the answer it waited for: launchRun review_posts with the token."""
    approve = {"persona": "ava", "day": TOMORROW, "reviewer": "n8n:mia",
               "posts": [{"post_id": f"{TOMORROW}-1", "action": "approve"}]}  # fmt: skip
    assert launch_and_wait(studio, review_params(approve))["status"] == "SUCCESS"
    ledger = Ledger(default_url(studio.root / "work"))
    [row] = [r for r in review.day_posts(ledger, "ava", TOMORROW) if r.post_id.endswith("-1")]
    assert (row.status, row.reviewer) == ("scheduled", "n8n:mia")

    partition = f"{TOMORROW}|ava"
    tags = [{"key": "dagster/partition", "value": partition}, {"key": "dagster/partition/date", "value": TOMORROW},
            {"key": "dagster/partition/persona", "value": "ava"}]  # fmt: skip
    bad = {"persona": "ava", "day": TOMORROW, "posts": [{"post_id": f"{TOMORROW}-2", "action": "reschedule"}]}
    failed = launch_and_wait(studio, review_params(bad, tags))
    assert failed["status"] == "FAILURE"
    page = requests.get(f"{studio.url}/studio", timeout=120).text
    assert "reschedule needs a new time" in page, "the last failure is on the overview, with its fix"
    assert f"/runs/{failed['id']}" in page


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        unavailable("Debian's chromium is not installed (apt-get install chromium): the browser check needs it")
    return path


@pytest.mark.slow
def test_a_real_browser_shows_the_week_grid_thumbnails_and_a_playable_reel(studio: Studio, tmp_path: Path) -> None:
    browser = chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1400,1600", "--virtual-time-budget=15000"]  # fmt: skip
    url = f"{studio.url}/studio"
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=300).stdout
    assert '<table class="week-grid">' in dom
    assert len(re.findall(r'<img class="thumb"', dom)) == 1
    [video] = re.findall(r"<video[^>]*>", dom)
    assert "controls" in video and ".mp4" in video
    shot = tmp_path / "studio.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=300, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1600)
    pixels = image.getdata()
    thumb = sum(1 for p in pixels if all(abs(a - b) < 12 for a, b in zip(p, THUMB_RGB, strict=True)))
    assert thumb > 2000, f"the thumbnail is not visible in the screenshot ({thumb} pixels of its colour)"
    shutil.copy(shot, studio.root / "studio.png")  # kept with the server's files for a person to look at
