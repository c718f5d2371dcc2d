"""Moving files between the media store and a local working folder, for tools that need real paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

from influencer_pipeline.media.store import MediaStore


def download_prefix(store: MediaStore, prefix: str, local_dir: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Mirror the files under `prefix` with these suffixes into `local_dir` (extras there are removed).

    Returns the local paths, sorted. Files already present with the same bytes are not rewritten, so a retry
    after a crash keeps modification times and trainer caches stay valid.
    """
    local_dir.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, bytes] = {}
    for obj in store.list(prefix):
        name = obj.key[len(prefix) :]
        if "/" not in name and name.endswith(suffixes):
            wanted[name] = store.read_bytes(obj.key)
    for stale in local_dir.iterdir():
        if stale.is_file() and stale.name not in wanted:
            stale.unlink()
    for name, data in wanted.items():
        path = local_dir / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
    return sorted(local_dir / name for name in wanted)


def fingerprint_files(paths: list[Path]) -> str:
    """A digest of names and contents: the identity of a dataset as a trainer sees it."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
