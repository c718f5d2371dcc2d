"""The media store: where uploads, curated images, weights and videos live.

Two backends behind one small interface. Keys are `/`-separated and relative to the store root (a folder,
or a bucket plus prefix), so the same asset code runs on a laptop and against S3/MinIO.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class MediaObject:
    """One stored object as a listing reports it; `etag` changes whenever the content may have changed."""

    key: str
    size: int
    modified: float
    etag: str


class MediaStore(Protocol):
    """What every backend offers. `uri` is for humans (metadata, logs); code always uses keys.

    Prefixes passed to `list` and `list_children` name folders ("uploads/ava/"), never partial file names.
    """

    def list(self, prefix: str) -> Iterator[MediaObject]: ...

    def list_children(self, prefix: str) -> list[str]: ...

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def uri(self, key: str) -> str: ...

    def change_token(self, prefix: str) -> str | None: ...

    def digest(self, obj: MediaObject) -> str: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise ValueError(f"media key {key!r} is not a relative '/'-separated path")
    return key


class LocalMediaStore:
    """A folder on disk. Writes go to a temporary file and are renamed, so readers never see half a file."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def list(self, prefix: str) -> Iterator[MediaObject]:
        base = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in sorted(filenames):
                full = Path(dirpath) / name
                if name.startswith(".tmp-"):
                    continue
                st = full.stat()
                key = full.relative_to(self.root).as_posix()
                yield MediaObject(key, st.st_size, st.st_mtime, f"{st.st_size}-{st.st_mtime_ns}")

    def list_children(self, prefix: str) -> list[str]:
        base = self.path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        return sorted(entry.name for entry in os.scandir(base) if entry.is_dir())

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def change_token(self, prefix: str) -> str | None:
        """The folder's mtime: it moves when an entry is added, removed or renamed; it costs one stat."""
        try:
            return str(self.path(prefix.rstrip("/")).stat().st_mtime_ns)
        except FileNotFoundError:
            return None

    def digest(self, obj: MediaObject) -> str:
        """sha256 of the content, so an identical re-upload (new mtime, same bytes) digests the same."""
        h = hashlib.sha256()
        with self.path(obj.key).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()


class S3MediaStore:
    """A bucket (and optional prefix) on S3 or MinIO, through a boto3 client from dagster-aws `S3Resource`."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _full(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def list(self, prefix: str) -> Iterator[MediaObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix) :]
                yield MediaObject(key, obj["Size"], obj["LastModified"].timestamp(), obj["ETag"].strip('"'))

    def list_children(self, prefix: str) -> list[str]:
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        paginator = self.client.get_paginator("list_objects_v2")
        names: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(self.prefix + prefix) :].rstrip("/"))
        return sorted(names)

    def read_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def change_token(self, prefix: str) -> str | None:
        """S3 has no cheap folder token: callers must list (metadata only, 1,000 keys per request)."""
        return None

    def digest(self, obj: MediaObject) -> str:
        """The ETag: the content MD5 for single-part uploads, so identical re-uploads digest the same."""
        return obj.etag
