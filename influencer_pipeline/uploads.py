"""Which persona upload folders changed, settled, and need a dataset run.

The upload sensor calls `scan` once per tick with the previous cursor. The cost of a tick follows the
changes, not the number of files:

- local folders: one `stat` per persona folder; a folder is listed only when its mtime moved (a file was
  added, removed or renamed) or a periodic full rescan is due (which catches files overwritten in place);
- S3/MinIO: one metadata-only `ListObjectsV2` page per 1,000 keys (S3 has no cheaper change signal); no
  object is ever downloaded by the sensor.

Content is hashed only once a folder has settled (no change for `settle_seconds`, or a `READY` marker), so
a 2 GB upload in progress is not re-read every tick. The content key is a digest of every file's name and
content digest (sha256 locally, ETag on S3): re-uploading identical files yields the same key, and the run
key built from it makes duplicate ticks harmless even if the cursor were lost.

The store's listings skip symbolic links, pipes and devices (a linked persona folder is reported once as
invalid), and its reads never wait on a file, so no upload can stall the sensor for the other personas.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from influencer_pipeline.errors import InputError
from influencer_pipeline.media.keys import UPLOADS, uploads_prefix
from influencer_pipeline.media.store import TOO_LARGE, MediaObject, MediaStore, UnsafeMediaError
from influencer_pipeline.personas import MAX_PROFILE_BYTES, PROFILE_NAME, validate_slug
from influencer_pipeline.profile_inputs import profile_training_digest

READY_MARKER = "READY"


@dataclass
class FolderState:
    """What the sensor remembers about one persona folder between ticks."""

    listing: str = ""  # digest of (key, size, etag) of the last listing
    token: str | None = None  # backend change token seen with that listing
    changed_at: float = 0.0  # when `listing` was first seen (start of the settle window)
    launched: str = ""  # content key of the last dataset run requested
    resolved: str = ""  # the listing whose content was last hashed: nothing to do until the listing moves


@dataclass
class UploadCursor:
    folders: dict[str, FolderState] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    last_full_scan: float = 0.0

    def serialize(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str | None) -> UploadCursor:
        if not text:
            return cls()
        raw = json.loads(text)
        folders = {k: FolderState(**v) for k, v in raw.get("folders", {}).items()}
        return cls(folders, raw.get("invalid", []), raw.get("last_full_scan", 0.0))


@dataclass(frozen=True)
class ReadyDataset:
    persona: str
    content_key: str
    files: int

    @property
    def run_key(self) -> str:
        return f"dataset:{self.persona}:{self.content_key[:20]}"


@dataclass
class ScanResult:
    cursor: UploadCursor
    new_personas: list[str] = field(default_factory=list)
    ready: list[ReadyDataset] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    newly_invalid: list[InputError] = field(default_factory=list)
    folders_listed: int = 0


def _is_data_file(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return not name.startswith(".")


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def content_key(store: MediaStore, objects: list[MediaObject]) -> str:
    """Digest of what a dataset run would read: every file's name and content, the READY marker excluded.

    `persona.yaml` counts only through its training fields (trigger and class word, preset): editing a theme or
    a posting time is not a new dataset and does not retrain (profile_inputs.py).
    """
    parts = [f"{o.key}\t{_safe_digest(store, o)}" for o in objects if not o.key.endswith("/" + READY_MARKER)]
    return _digest(sorted(parts))


def _safe_digest(store: MediaStore, obj: MediaObject) -> str:
    """A file above the read limit (the store's, or 64 KB for persona.yaml) digests as its listing entry:
    the run rejects it unread, and hashing it would read gigabytes every time the folder settles."""
    try:
        return _file_digest(store, obj)
    except UnsafeMediaError as err:
        if err.reason != TOO_LARGE:
            raise
        return f"too-large:{obj.size}:{obj.etag}"


def _file_digest(store: MediaStore, obj: MediaObject) -> str:
    folder, _, name = obj.key.rpartition("/")
    if name != PROFILE_NAME:
        return store.digest(obj)
    slug = folder.rsplit("/", 1)[-1]
    return profile_training_digest(slug, store.read_bytes(obj.key, max_bytes=MAX_PROFILE_BYTES), store.uri(obj.key))


def scan(
    store: MediaStore,
    previous: UploadCursor,
    now: float,
    settle_seconds: float = 60.0,
    require_ready_marker: bool = False,
    full_scan_seconds: float = 300.0,
) -> ScanResult:
    """Compare the upload folders with the cursor and say which datasets are new, settled, or still moving."""
    cursor = UploadCursor(dict(previous.folders), list(previous.invalid), previous.last_full_scan)
    full_scan = now - cursor.last_full_scan >= full_scan_seconds
    if full_scan:
        cursor.last_full_scan = now
    result = ScanResult(cursor)
    for entry in store.refused(UPLOADS, recursive=False):
        name = entry.key.rstrip("/").rsplit("/", 1)[-1]
        if name not in cursor.invalid:
            cursor.invalid.append(name)
            refused = UnsafeMediaError(entry.key, entry.reason)
            result.newly_invalid.append(InputError(entry.key, f"ignored: {refused.rule}", refused.fix))
    for name in store.list_children(UPLOADS):
        try:
            validate_slug(name, where=f"{UPLOADS}/{name}/")
        except InputError as err:
            if name not in cursor.invalid:
                cursor.invalid.append(name)
                result.newly_invalid.append(err)
            continue
        _scan_folder(store, name, cursor, result, now, settle_seconds, require_ready_marker, full_scan)
    return result


def _scan_folder(
    store: MediaStore,
    persona: str,
    cursor: UploadCursor,
    result: ScanResult,
    now: float,
    settle_seconds: float,
    require_ready_marker: bool,
    full_scan: bool,
) -> None:
    prefix = uploads_prefix(persona)
    state = cursor.folders.get(persona)
    if state is None:
        result.new_personas.append(persona)
        state = FolderState(changed_at=now)
    token = store.change_token(prefix)
    unchanged_folder = token is not None and token == state.token and not full_scan
    if unchanged_folder and state.resolved == state.listing:
        cursor.folders[persona] = state
        return

    objects = [o for o in store.list(prefix) if _is_data_file(o.key)]
    result.folders_listed += 1
    listing = _digest(sorted(f"{o.key}\t{o.size}\t{o.etag}" for o in objects))
    if listing != state.listing:
        state = FolderState(listing=listing, changed_at=now, launched=state.launched)
    state.token = token
    cursor.folders[persona] = state

    has_marker = any(o.key == prefix + READY_MARKER for o in objects)
    images = [o for o in objects if o.key != prefix + READY_MARKER]
    settled = has_marker or (not require_ready_marker and now - state.changed_at >= settle_seconds)
    if not images:
        return
    if not settled:
        result.waiting.append(persona)
        return
    try:
        key = content_key(store, images)
    except (FileNotFoundError, UnsafeMediaError):
        # A file was removed or replaced by a link since the listing: the folder is still changing.
        result.waiting.append(persona)
        return
    state.resolved = listing
    if key != state.launched:
        state.launched = key
        result.ready.append(ReadyDataset(persona, key, len(images)))
