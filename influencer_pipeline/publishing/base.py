"""The publisher contract: two phases, so the one call that makes a post public happens at most once.

`prepare` does everything that is safe to repeat (upload media, create the container or upload session) and
returns a `RemoteHandle` that the ledger persists *before* `commit` is called. `commit` is the single
side effect that publishes. When a commit ends ambiguously (timeout, 5xx, crash), the ledger never calls it
again blindly: it calls `reconcile`, which reads the platform to learn whether the post went out.
Each publisher's docstring says how it reconciles, with the platform page it reads (Instagram: the container's
`status_code`; Facebook: the Page's `published_posts`; YouTube: the resumable session; TikTok: the post status).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

ErrorKind = Literal["transient", "throttle", "auth", "permanent"]


@dataclass(frozen=True)
class PostMedia:
    path: Path
    kind: Literal["image", "video"]
    sha256: str = ""


@dataclass(frozen=True)
class PublishRequest:
    """What one (post, account) pair publishes. `caption` is final text for this platform (hashtags included)."""

    post_id: str
    platform: str
    account_id: str
    format: Literal["image", "carousel", "reel"]
    caption: str
    media: tuple[PostMedia, ...]
    title: str = ""  # YouTube
    ai_generated: bool = True  # sets the platforms' AI / synthetic-media labels
    scheduled_for: str = ""  # ISO time the post was planned for (for reconciliation by time window)


@dataclass(frozen=True)
class RemoteHandle:
    """Identifies this attempt on the platform (container id, upload session, publish id): persisted before commit."""

    platform: str
    value: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Published:
    remote_id: str
    permalink: str = ""


class PublishError(Exception):
    """A classified failure. `retry_after` is the platform's hint in seconds when it gave one."""

    def __init__(self, message: str, kind: ErrorKind, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class CommitOutcomeUnknown(Exception):
    """The commit call may or may not have published (timeout, dropped connection, 5xx): reconcile, never retry."""


class Publisher(Protocol):
    platform: str

    def prepare(self, request: PublishRequest, token: str) -> RemoteHandle:
        """Upload media and create the platform's container/session. Safe to call again after a failure."""
        ...

    def wait_ready(self, handle: RemoteHandle, token: str) -> None:
        """Block (bounded) until the platform has processed the media; raises PublishError on failure."""
        ...

    def commit(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published:
        """The single call that makes the post public. Raises CommitOutcomeUnknown when the outcome is ambiguous."""
        ...

    def reconcile(self, handle: RemoteHandle, request: PublishRequest, token: str) -> Published | None:
        """Read the platform: the post if the commit landed, None if it provably did not. Raises if undecidable."""
        ...
