"""Link, then publish, as a user would: one test per platform (and per Instagram login), production code only.

Each test links persona `ava` with `Accounts.from_env()` (the production provider table, re-homed to the OAuth
stand-in by `<PLATFORM>_OAUTH_BASE_URL`, app credentials from the environment, tokens encrypted in the accounts
database), then builds the publisher with `live_publisher(platform, account, ...)` exactly as the `published_posts`
asset does, with only `<PLATFORM>_API_BASE_URL` pointing at the platform's stand-in, and publishes one post with
the token `Accounts.fresh_token` hands out. The platform stand-ins accept the tokens the OAuth stand-in issued and
refuse a wrong host, Graph version or login, so a publisher built for the wrong API fails here. Assertions read the
stand-ins' own records.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from PIL import Image

from influencer_pipeline.accounts.clock import utcnow
from influencer_pipeline.accounts.providers import provider_for
from influencer_pipeline.accounts.service import Accounts
from influencer_pipeline.accounts.store import Account
from influencer_pipeline.endpoints import GRAPH_API_VERSION
from influencer_pipeline.media import LocalMediaStore, S3MediaStore
from influencer_pipeline.publishing.base import PostMedia, Published, Publisher, PublishRequest
from influencer_pipeline.publishing.live import live_publisher
from influencer_pipeline.video import ffmpeg
from tests.accounts.oauth_standin import CLIENT_ID, CLIENT_SECRET, FB_PAGES, IG_USER_ID, Browser, OAuthStandin
from tests.publishing.meta_standin import MetaStandin
from tests.publishing.tiktok_standin import TikTokStandin
from tests.publishing.youtube_standin import YouTubeStandin

CALLBACK = "https://studio.example.com/oauth/callback"
CAPTION = "Sunrise swim before the city wakes up #ai"


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The accounts database and token key, and the stand-in app's credentials for every platform."""
    monkeypatch.setenv("INFLUENCER_ACCOUNTS_DB", f"sqlite:///{tmp_path / 'accounts.db'}")
    monkeypatch.setenv("INFLUENCER_TOKEN_KEYS", Fernet.generate_key().decode())
    for prefix in ("INSTAGRAM", "FACEBOOK", "GOOGLE"):
        monkeypatch.setenv(f"{prefix}_CLIENT_ID", CLIENT_ID)
        monkeypatch.setenv(f"{prefix}_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TIKTOK_CLIENT_KEY", CLIENT_ID)
    monkeypatch.setenv("TIKTOK_CLIENT_SECRET", CLIENT_SECRET)
    yield monkeypatch


def link(platform: str, oauth: OAuthStandin, login: str | None = None) -> tuple[Accounts, Account]:
    """`accounts link PLATFORM --persona ava [--login LOGIN]`: loopback where allowed, else Meta's pasted callback."""
    accounts = Accounts.from_env()
    loopback = provider_for(platform, login=login).loopback
    browser = Browser(follow=loopback)
    options: dict[str, Any] = {} if loopback else {"callback_url": CALLBACK}
    account = accounts.link(
        "ava",
        platform,
        login=login,
        open_browser=browser.open,
        read_redirect=browser.pasted,
        say=lambda line: None,
        timeout_s=10,
        **options,
    )
    assert oauth.count("token") == 1 and oauth.count("refused") == 0
    return accounts, account


def publish(publisher: Publisher, request: PublishRequest, accounts: Accounts) -> Published:
    token = accounts.fresh_token("ava", request.platform)
    handle = publisher.prepare(request, token)
    publisher.wait_ready(handle, token)
    return publisher.commit(handle, request, token)


def post(platform: str, fmt: str, *paths: Path, account: Account) -> PublishRequest:
    media = tuple(PostMedia(p, "video" if p.suffix == ".mp4" else "image") for p in paths)
    return PublishRequest(
        f"2026-12-01-{fmt}", platform, account.account_id, fmt, f"{CAPTION} ({fmt})", media, title="Sunrise swim"
    )  # type: ignore[arg-type]


def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (1080, 1350), (230, 150, 90)).save(path)
    return path


def reel(tmp_path: Path) -> Path:
    """A real 2 s vertical H.264 MP4 (TikTok and YouTube probe it), padded with a `free` box to ~300 KB."""
    path = tmp_path / "reel.mp4"
    frames = ["-f", "lavfi", "-i", "color=c=teal:s=72x128:r=10:d=2"]
    ffmpeg.run([*frames, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)], what="reel")
    with open(path, "ab") as stream:
        stream.write(struct.pack(">I4s", 300_008, b"free") + bytes(300_000))
    return path


@pytest.fixture
def s3_store(s3_bucket: tuple[Any, str]) -> S3MediaStore:
    client, bucket = s3_bucket
    return S3MediaStore(client, bucket, prefix="studio")


@pytest.mark.parametrize("login", ["instagram", "facebook"])
def test_instagram_links_and_publishes_on_the_api_of_its_login(
    login: str, environment: pytest.MonkeyPatch, s3_store: S3MediaStore, tmp_path: Path
) -> None:
    """Instagram Login: graph.instagram.com, reels as a presigned video_url. Facebook Login (through the Page the
    account is connected to): graph.facebook.com, reels through rupload. The account records which."""
    server = "instagram" if login == "instagram" else "facebook"
    with OAuthStandin(server, clock=utcnow) as oauth, MetaStandin(ig_user_id=IG_USER_ID, ig_login=login) as meta:
        environment.setenv("INSTAGRAM_OAUTH_BASE_URL", oauth.base_url)
        environment.setenv("INSTAGRAM_API_BASE_URL", meta.url)
        meta.trust(oauth.valid, login)
        accounts, account = link("instagram", oauth, login=None if login == "instagram" else login)
        assert (account.login, account.account_id) == (login, IG_USER_ID)

        publisher = live_publisher("instagram", account, s3_store, tmp_path / "work")
        published = [
            publish(publisher, post("instagram", fmt, path, account=account), accounts)
            for fmt, path in (("image", photo(tmp_path)), ("reel", reel(tmp_path)))
        ]

    host = "graph.instagram.com" if login == "instagram" else "graph.facebook.com"
    assert [m.id for m in meta.live_ig()] == [p.remote_id for p in published]
    assert [m.media_type for m in meta.live_ig()] == ["IMAGE", "REELS"]
    assert meta.refused() == []
    assert {r.host for r in meta.requests} == ({host} if login == "instagram" else {host, "rupload.facebook.com"})
    assert {r.version for r in meta.requests} == {GRAPH_API_VERSION}
    reel_container = meta.containers[meta.live_ig()[1].container_id]
    assert reel_container.resumable is (login == "facebook")
    assert all(f.url.startswith(s3_store.client.meta.endpoint_url) for f in meta.fetched)  # presigned S3 links


def test_facebook_page_links_and_publishes_a_photo_and_a_video(environment: pytest.MonkeyPatch, tmp_path: Path) -> None:
    page_id = FB_PAGES[0][0]
    with OAuthStandin("facebook", clock=utcnow) as oauth, MetaStandin(page_id=page_id) as meta:
        environment.setenv("FACEBOOK_OAUTH_BASE_URL", oauth.base_url)
        environment.setenv("FACEBOOK_API_BASE_URL", meta.url)
        meta.trust(oauth.valid, "facebook")
        accounts, account = link("facebook", oauth)
        assert (account.login, account.account_id) == ("facebook", page_id)

        publisher = live_publisher("facebook", account, LocalMediaStore(tmp_path / "media"), tmp_path / "work")
        published = [
            publish(publisher, post("facebook", fmt, path, account=account), accounts)
            for fmt, path in (("image", photo(tmp_path)), ("reel", reel(tmp_path)))
        ]

    assert len(meta.fb_posts) == 2 and meta.refused() == []
    assert [p.remote_id for p in published] == [meta.fb_posts[0].id, meta.fb_posts[1].video_id]
    assert {r.host for r in meta.requests} == {"graph.facebook.com", "graph-video.facebook.com"}
    assert {r.version for r in meta.requests} == {GRAPH_API_VERSION}


def test_youtube_links_and_publishes_a_labelled_short(environment: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with OAuthStandin("youtube", clock=utcnow) as oauth, YouTubeStandin(tokens=()) as youtube:
        environment.setenv("YOUTUBE_OAUTH_BASE_URL", oauth.base_url)
        environment.setenv("YOUTUBE_API_BASE_URL", youtube.url)
        youtube.trust(oauth.valid)
        accounts, account = link("youtube", oauth)

        publisher = live_publisher("youtube", account, LocalMediaStore(tmp_path / "media"), tmp_path / "work")
        published = publish(publisher, post("youtube", "reel", reel(tmp_path), account=account), accounts)

    [video] = youtube.videos
    assert published.remote_id == video.id
    assert video.resource["status"]["containsSyntheticMedia"] is True
    assert [session.params["part"] for session in youtube.sessions.values()] == ["snippet,status"]
    assert ("POST", "wrong-route") not in youtube.requests


def test_tiktok_links_and_publishes_a_labelled_video(environment: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with OAuthStandin("tiktok", clock=utcnow) as oauth, TikTokStandin(tokens=()) as tiktok:
        environment.setenv("TIKTOK_OAUTH_BASE_URL", oauth.base_url)
        environment.setenv("TIKTOK_API_BASE_URL", tiktok.url)
        tiktok.trust(oauth.valid)
        accounts, account = link("tiktok", oauth)

        publisher = live_publisher("tiktok", account, LocalMediaStore(tmp_path / "media"), tmp_path / "work")
        published = publish(publisher, post("tiktok", "reel", reel(tmp_path), account=account), accounts)

    [live] = tiktok.posts
    assert published.remote_id == live.post_id
    assert live.post_info["is_aigc"] is True
    assert "wrong-host" not in tiktok.requests
    assert json.loads(json.dumps(live.post_info)) == live.post_info
