"""The outbox: the embedded-default publisher, which leaves a bundle per post for a person to post by hand.

`prepare` writes `<root>/<post_id>/<platform>/` (the media copied in order, `caption.txt`, `post.json`) into a
staging folder and renames it into place, so a person never sees half a bundle. `commit` releases the bundle by
writing a `READY_TO_POST` marker with a hard link, which is atomic and fails if the marker exists: a marker is
either absent or complete, and written once. `reconcile` reads it. The outbox needs no token; the argument is
ignored.

A released bundle is `ready_to_post`, not published: nothing here knows whether a person posted it. When they have,
`influencer-pipeline posts mark-posted` records it in the ledger (`review.mark_posted`) and writes a `POSTED`
marker (`record_posted`) beside the bundle, so the folder says the same as the ledger.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from influencer_pipeline.publishing.base import PostMedia, Published, PublishError, PublishRequest, RemoteHandle
from influencer_pipeline.publishing.ledger import media_sha256

PLATFORM = "outbox"
MARKER = "READY_TO_POST"
LEGACY_MARKER = "PUBLISHED"  # what releases were called before `ready_to_post`: still read, never written
POSTED = "POSTED"
OUTBOX_ACCOUNT_PREFIX = "outbox:"
HASHTAG = re.compile(r"#\w+")


def outbox_account(persona: str, platform: str) -> str:
    """The ledger account of a persona's outbox for one platform (one folder per persona)."""
    return f"{OUTBOX_ACCOUNT_PREFIX}{persona}:{platform}"


def is_outbox_account(account_id: str) -> bool:
    return account_id.startswith(OUTBOX_ACCOUNT_PREFIX)


def bundle_folder(root: Path, persona: str, post_id: str, platform: str) -> Path:
    """Where the bundle of a persona's post for one platform lives under the outbox root."""
    return Path(root) / persona / post_id / platform


def record_posted(bundle: Path, *, by: str, now: datetime, url: str = "") -> Path:
    """Write the `POSTED` marker (who said so, when, and the post's address if given) into a released bundle."""
    if not (bundle / MARKER).exists() and not (bundle / LEGACY_MARKER).exists():
        raise PublishError(f"outbox bundle {bundle} was never released; nothing to mark as posted", "permanent")
    marker = bundle / POSTED
    if not marker.exists():
        record = {"posted_by": by, "marked_at": now.isoformat(), "url": url}
        marker.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return marker


class OutboxPublisher:
    """Publishes to a folder. Implements the `Publisher` contract; `request.platform` names the target platform."""

    platform = PLATFORM

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def bundle_dir(self, request: PublishRequest) -> Path:
        return self.root / request.post_id / request.platform

    def prepare(self, request: PublishRequest, token: str) -> RemoteHandle:
        """Write the bundle; a bundle already released is left exactly as it is (commit will report it)."""
        bundle = self.bundle_dir(request)
        if not _released(bundle):
            _check_owner(bundle, request)
            _replace_dir(bundle, lambda staging: _write_bundle(staging, request))
        return RemoteHandle(PLATFORM, str(bundle.relative_to(self.root)), {"account_id": request.account_id})

    def wait_ready(self, handle: RemoteHandle, token: str) -> None:
        """Nothing processes the bundle, but it must still be intact: every file present with its recorded hash."""
        bundle = self.root / handle.value
        try:
            metadata = json.loads((bundle / "post.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PublishError(f"outbox bundle {bundle} is unreadable ({exc}); prepare it again", "transient") from exc
        for item in metadata["media"]:
            path = bundle / item["file"]
            if not path.is_file() or media_sha256(path) != item["sha256"]:
                raise PublishError(f"outbox bundle {bundle}: {item['file']} is missing or changed", "transient")

    def commit(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published:
        """Write the marker once; if it is already there, report the release it records instead of a new one."""
        bundle = self.root / handle.value
        if not (bundle / "post.json").is_file():
            raise PublishError(f"outbox bundle {bundle} is gone; nothing was released. Prepare it again", "transient")
        if (bundle / LEGACY_MARKER).exists():  # released before the marker was renamed: that release stands
            return _read_marker(bundle)
        published = Published(remote_id=handle.value, permalink=bundle.resolve().as_uri())
        record = {"remote_id": published.remote_id, "permalink": published.permalink}
        record["committed_at"] = datetime.now(UTC).isoformat()
        with tempfile.NamedTemporaryFile("w", dir=bundle, prefix=".marker-", delete=False, encoding="utf-8") as tmp:
            json.dump(record, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        try:
            os.link(tmp.name, bundle / MARKER)
        except FileExistsError:
            return _read_marker(bundle)
        finally:
            os.unlink(tmp.name)
        return published

    def reconcile(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published | None:
        """The marker is written atomically, so its absence proves the bundle was never released."""
        bundle = self.root / handle.value
        return _read_marker(bundle) if _released(bundle) else None


def _check_owner(bundle: Path, request: PublishRequest) -> None:
    """One bundle folder per (post, platform): refuse to overwrite another account's bundle."""
    metadata = bundle / "post.json"
    if not metadata.exists():
        return
    owner = json.loads(metadata.read_text(encoding="utf-8")).get("account")
    if owner != request.account_id:
        raise PublishError(
            f"{bundle} already holds the bundle of account {owner!r} for this post; post {request.post_id} can go to "
            f"one {request.platform} account through the outbox. Fix: give the second account its own post id",
            "permanent",
        )


def _replace_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Build the folder next to `target` and swap it in, so readers see the old bundle or the new, never a mix."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        fill(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_bundle(folder: Path, request: PublishRequest) -> None:
    media = [_copy_media(folder, index, item) for index, item in enumerate(request.media, start=1)]
    (folder / "caption.txt").write_text(request.caption, encoding="utf-8")
    metadata = {
        "post_id": request.post_id,
        "platform": request.platform,
        "account": request.account_id,
        "title": request.title,
        "format": request.format,
        "hashtags": HASHTAG.findall(request.caption),
        "scheduled_for": request.scheduled_for,
        "ai_generated": request.ai_generated,
        "media": media,
        "how_to_post": _instructions(request),
    }
    (folder / "post.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _copy_media(folder: Path, index: int, item: PostMedia) -> dict[str, str]:
    """Copy one file under an order-preserving name; a file that changed since it was planned is refused."""
    name = f"{index:02d}-{item.path.name}"
    try:
        shutil.copyfile(item.path, folder / name)
    except OSError as exc:
        raise PublishError(f"outbox: cannot copy {item.path} ({exc}). Fix: restore the file", "permanent") from exc
    digest = media_sha256(folder / name)
    if item.sha256 and item.sha256 != digest:
        raise PublishError(
            f"outbox: {item.path} changed since it was planned (sha256 {digest[:12]}…, planned {item.sha256[:12]}…). "
            "Fix: re-plan the post with the current file",
            "permanent",
        )
    return {"file": name, "kind": item.kind, "sha256": digest}


def _instructions(request: PublishRequest) -> list[str]:
    steps = [
        f"Post to {request.platform} as {request.account_id}"
        + (f" at {request.scheduled_for}" if request.scheduled_for else ""),
        "Attach the media files in name order",
        "Paste caption.txt unchanged",
    ]
    if request.title:
        steps.append(f"Title: {request.title}")
    if request.ai_generated:
        steps.append("Turn on the platform's AI-generated content label")
    return steps


def _released(bundle: Path) -> bool:
    return (bundle / MARKER).exists() or (bundle / LEGACY_MARKER).exists()


def _read_marker(bundle: Path) -> Published:
    marker = bundle / LEGACY_MARKER if (bundle / LEGACY_MARKER).exists() else bundle / MARKER
    record = json.loads(marker.read_text(encoding="utf-8"))
    return Published(remote_id=record["remote_id"], permalink=record["permalink"])
