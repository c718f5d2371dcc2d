"""The media store: where uploads, curated images, weights and videos live.

Two backends behind one small interface. Keys are `/`-separated and relative to the store root (a folder,
or a bucket plus prefix), so the same asset code runs on a laptop and against S3/MinIO.

Uploads are written by people (and by whatever synced their folder), so the local backend never lets a key
lead outside its root: listings skip symbolic links and anything that is not a regular file (`lstat`), and
reports them through `refused`; reads open every path component with `O_NOFOLLOW` relative to the root, open
the file `O_NONBLOCK` (a FIFO cannot make a reader wait for a writer, see open(2)), check with `fstat` that it
is a regular file, and never read more than `max_file_bytes`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from influencer_pipeline.errors import InputError

# Generous: the largest files are rendered reels and SDXL LoRAs (hundreds of MB); reads are held in memory.
DEFAULT_MAX_FILE_BYTES = 2 * 1024**3
SYMLINK = "symbolic link"
NOT_REGULAR = "not a regular file"
TOO_LARGE = "too large"
_DETAILS = {
    SYMLINK: "links are never followed, they can lead outside the media folder",
    NOT_REGULAR: "pipes, sockets and devices are never read",
}
_FIXES = {
    SYMLINK: "copy the file or folder itself into the media folder instead of linking to it",
    NOT_REGULAR: "remove it and upload plain files only",
    TOO_LARGE: "upload a smaller file, or raise the media store's max_file_bytes if you trust it",
}
_CHUNK = 1 << 20
OUTPUT_FILE_MODE = 0o644


@dataclass(frozen=True)
class MediaObject:
    """One stored object as a listing reports it; `etag` changes whenever the content may have changed."""

    key: str
    size: int
    modified: float
    etag: str


@dataclass(frozen=True)
class RefusedEntry:
    """An entry a listing skipped because the store will not read it; `reason` is `SYMLINK` or `NOT_REGULAR`.

    Folders end with `/` (a symbolic link to a folder is reported, never entered).
    """

    key: str
    reason: str


class UnsafeMediaError(InputError):
    """A key the store refuses to read or write: a link, a special file, a path outside the root, too large.

    `reason` is one of `SYMLINK`, `NOT_REGULAR`, `TOO_LARGE`; `detail` says more (sizes, where a link leads).
    """

    def __init__(self, where: str, reason: str, detail: str = "") -> None:
        self.reason = reason
        detail = detail or _DETAILS.get(reason, "")
        super().__init__(where, f"{reason}: {detail}" if detail else reason, _FIXES.get(reason, "remove it"))


class MediaStore(Protocol):
    """What every backend offers. `uri` is for humans (metadata, logs); code always uses keys.

    Prefixes passed to `list`, `list_children` and `refused` name folders ("uploads/ava/"), never partial
    file names. `read_bytes` raises `FileNotFoundError` for a missing key and `UnsafeMediaError` for one it
    will not read (more than `max_bytes`, or for the local backend a link or special file).
    """

    def list(self, prefix: str) -> Iterator[MediaObject]: ...

    def list_children(self, prefix: str) -> list[str]: ...

    def refused(self, prefix: str, recursive: bool = True) -> list[RefusedEntry]: ...

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes: ...

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


def _too_large(where: str, size: int | str, limit: int) -> UnsafeMediaError:
    return UnsafeMediaError(where, TOO_LARGE, f"{size} bytes, above the {limit}-byte read limit")


class LocalMediaStore:
    """A folder on disk. Writes go to a temporary file and are renamed, so readers never see half a file."""

    def __init__(self, root: str | os.PathLike[str], max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.root = Path(root).resolve()
        self.max_file_bytes = max_file_bytes

    def path(self, key: str) -> Path:
        """The file for `key`; refused when symbolic links on the way lead outside the root."""
        path = self.root / _check_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise UnsafeMediaError(str(path), SYMLINK, f"leads outside the media folder {self.root}")
        return path

    def list(self, prefix: str) -> Iterator[MediaObject]:
        for key, st in self._walk(prefix, recursive=True):
            if isinstance(st, os.stat_result):
                yield MediaObject(key, st.st_size, st.st_mtime, f"{st.st_size}-{st.st_mtime_ns}")

    def refused(self, prefix: str, recursive: bool = True) -> list[RefusedEntry]:
        return [RefusedEntry(key, reason) for key, reason in self._walk(prefix, recursive) if isinstance(reason, str)]

    def list_children(self, prefix: str) -> list[str]:
        base = self._folder(prefix)
        if base is None:
            return []
        with os.scandir(base) as entries:
            return sorted(entry.name for entry in entries if entry.is_dir(follow_symlinks=False))

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        limit = self.max_file_bytes if max_bytes is None else min(max_bytes, self.max_file_bytes)
        fd, st = self._open(key)
        with os.fdopen(fd, "rb") as fh:
            if st.st_size > limit:
                raise _too_large(self.uri(key), st.st_size, limit)
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise _too_large(self.uri(key), f"more than {limit}", limit)
        return data

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        # mkstemp creates 0600; outputs (LoRAs, reels, images) must be readable by the group and others, as a
        # plain open() under the usual 022 umask makes them, so a ComfyUI service under another user can load them.
        os.fchmod(fd, OUTPUT_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)

    def exists(self, key: str) -> bool:
        """True for a regular file the store would read; links and special files do not exist for readers."""
        try:
            fd, _ = self._open(key)
        except (FileNotFoundError, NotADirectoryError, UnsafeMediaError):
            return False
        os.close(fd)
        return True

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return str(self.root / _check_key(key))

    def change_token(self, prefix: str) -> str | None:
        """The folder's mtime: it moves when an entry is added, removed or renamed; it costs one stat."""
        try:
            return str(os.lstat(self.root / _check_key(prefix.rstrip("/"))).st_mtime_ns)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def digest(self, obj: MediaObject) -> str:
        """sha256 of the content, so an identical re-upload (new mtime, same bytes) digests the same."""
        h = hashlib.sha256()
        fd, st = self._open(obj.key)
        with os.fdopen(fd, "rb") as fh:
            if st.st_size > self.max_file_bytes:
                raise _too_large(self.uri(obj.key), st.st_size, self.max_file_bytes)
            read = 0
            for block in iter(lambda: fh.read(_CHUNK), b""):
                read += len(block)
                if read > self.max_file_bytes:
                    raise _too_large(self.uri(obj.key), f"more than {self.max_file_bytes}", self.max_file_bytes)
                h.update(block)
        return h.hexdigest()

    def _folder(self, prefix: str) -> Path | None:
        """The real folder for `prefix` (None when absent); a folder reached through a link is refused."""
        if not prefix.strip("/"):
            return self.root
        base = self.root / _check_key(prefix.rstrip("/"))
        try:
            st = os.lstat(base)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if os.path.realpath(base) != str(base):
            raise UnsafeMediaError(str(base), SYMLINK)
        return base if stat.S_ISDIR(st.st_mode) else None

    def _walk(self, prefix: str, recursive: bool) -> Iterator[tuple[str, os.stat_result | str]]:
        """(key, lstat) for regular files and (key, reason) for refused entries, in key order; never follows links."""
        base = self._folder(prefix)
        if base is None:
            return
        with os.scandir(base) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith(".tmp-"):
                continue
            key = Path(entry.path).relative_to(self.root).as_posix()
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                yield key + ("/" if entry.is_dir() else ""), SYMLINK
            elif stat.S_ISDIR(st.st_mode):
                if recursive:
                    yield from self._walk(key + "/", recursive)
            elif stat.S_ISREG(st.st_mode):
                yield key, st
            else:
                yield key, NOT_REGULAR

    def _open(self, key: str) -> tuple[int, os.stat_result]:
        """A read-only descriptor for the regular file at `key`, opened without following any link.

        Each folder is opened relative to the previous one with `O_NOFOLLOW`, so a link swapped in between
        a listing and this read is refused instead of followed (openat(2), open(2) `O_NOFOLLOW`).
        """
        parts = _check_key(key).split("/")
        where = self.uri(key)
        dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                next_fd = self._open_at(part, flags, dir_fd, where)
                os.close(dir_fd)
                dir_fd = next_fd
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = self._open_at(parts[-1], flags, dir_fd, where)
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UnsafeMediaError(where, NOT_REGULAR)
        return fd, st

    @staticmethod
    def _open_at(name: str, flags: int, dir_fd: int, where: str) -> int:
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
                raise UnsafeMediaError(where, SYMLINK) from None
            raise


class S3MediaStore:
    """A bucket (and optional prefix) on S3 or MinIO, through a boto3 client from dagster-aws `S3Resource`.

    Object storage has no links or special files, so `refused` is always empty; the read limit is checked
    against the object's `Content-Length` before its body is read.
    """

    def __init__(
        self, client: Any, bucket: str, prefix: str = "", max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.max_file_bytes = max_file_bytes

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

    def refused(self, prefix: str, recursive: bool = True) -> list[RefusedEntry]:
        return []

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        from botocore.exceptions import ClientError

        limit = self.max_file_bytes if max_bytes is None else min(max_bytes, self.max_file_bytes)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(self.uri(key)) from None
            raise
        body = response["Body"]
        try:
            if response["ContentLength"] > limit:
                raise _too_large(self.uri(key), response["ContentLength"], limit)
            return body.read()
        finally:
            body.close()

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
