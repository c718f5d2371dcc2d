"""LoRA files in the folder ComfyUI reads as `models/loras`, shared with (or mounted from) the ComfyUI host.

A LoRA is copied in atomically (ComfyUI never lists a half-written file), then we wait until ComfyUI lists it,
so a generation that follows never fails validation on a missing `lora_name`. What we deployed is recorded in a
ledger in that folder (`.influencer-deployed.json`: ComfyUI lists only model extensions, so it ignores it); a
group's (persona's) older files are retired once no queued prompt uses them. Files we did not deploy are never
touched.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.comfyui.client import ComfyUIClient
from influencer_pipeline.generation.comfyui.errors import ComfyUIError

log = logging.getLogger(__name__)

LORA_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pt2", ".bin", ".pth", ".sft")
LORA_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")
DEPLOYED_LEDGER = ".influencer-deployed.json"  # in the loras folder; ComfyUI lists only model extensions


def lora_file_name(name: str, source: Path) -> str:
    """The file name in ComfyUI's loras folder: `name`, plus the source's extension when it has none."""
    file_name = name if name.endswith(LORA_EXTENSIONS) else f"{name}{source.suffix}"
    if not LORA_NAME_RE.match(file_name) or ".." in file_name or not file_name.endswith(LORA_EXTENSIONS):
        raise InputError(
            f"LoRA name {name!r}",
            "must be a plain file name (letters, digits, '.', '_', '-') ending in " + ", ".join(LORA_EXTENSIONS),
            "use something like 'ava-v3.safetensors'",
        )
    return file_name


def shared_loras_dir(loras_dir: Path | None) -> Path:
    """The configured shared folder, refused clearly when it is not configured or not present on this host."""
    if loras_dir is None:
        raise ComfyUIError(
            "cannot deploy a LoRA: no shared loras folder is configured. Set loras_dir to a folder that "
            "ComfyUI reads as models/loras (mounted or shared with the ComfyUI host)"
        )
    if not loras_dir.is_dir():
        raise ComfyUIError(
            f"the shared loras folder {loras_dir} does not exist here. Mount ComfyUI's models/loras "
            "folder at that path, or fix loras_dir"
        )
    return loras_dir


def place_lora(source: Path, target: Path) -> None:
    """Copy `source` to `target` unless it already holds identical content."""
    if _same_content(source, target):
        log.info("LoRA %s is already in %s with identical content", target.name, target.parent)
        return
    if target.exists():
        log.warning(
            "replacing LoRA %s with different content: ComfyUI keeps serving the weights it already loaded "
            'under this name until its cache is cleared (POST /free {"free_memory": true}); prefer a new '
            "name per training run",
            target.name,
        )
    _atomic_copy(source, target)


def wait_until_listed(
    client: ComfyUIClient, file_name: str, folder: Path, timeout_s: float, poll_interval_s: float
) -> None:
    """Wait until ComfyUI lists the copied file; a folder ComfyUI does not read times out with a clear error."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = client.list_loras()
        if file_name in listed:
            return
        if time.monotonic() >= deadline:
            shown = ", ".join(listed[:10]) or "none"
            raise ComfyUIError(
                f"ComfyUI at {client.url} does not list the LoRA {file_name!r} {timeout_s:g} s after "
                f"it was copied to {folder} (it lists {len(listed)}: {shown}). Check the shared folder path: "
                "it must be the folder ComfyUI reads as models/loras (see its extra_model_paths.yaml)"
            )
        time.sleep(min(poll_interval_s, max(deadline - time.monotonic(), 0.0)))


def record_deployment(
    folder: Path,
    file_name: str,
    group: str | None,
    source: Path,
    retire_after_s: float,
    loras_in_queue: Callable[[], set[str]],
) -> None:
    """Record the file in the folder's deployment ledger, then remove this group's older deployed files that
    no queued or running prompt uses (`loras_in_queue`) and that were last deployed `retire_after_s` ago or
    more. Files we did not deploy (not in the ledger) are never touched."""
    with _ledger_lock(folder):
        ledger = read_ledger(folder)
        ledger[file_name] = {
            "group": group,
            "sha256": _sha256(source),
            "deployed_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        }
        now = dt.datetime.now(dt.UTC)
        older = [
            name
            for name, entry in ledger.items()
            if group is not None and entry.get("group") == group and name != file_name
            if _age_s(entry, now) >= retire_after_s
        ]
        in_use: set[str] = set()
        if older:
            try:
                in_use = loras_in_queue()
            except ComfyUIError as exc:
                log.warning("kept older LoRAs of %s (cannot read ComfyUI's queue: %s)", group, exc)
                in_use = set(older)
        for old in older:
            if old in in_use:
                log.info("keeping %s: a queued or running ComfyUI prompt uses it; removed on a later deploy", old)
                continue
            (folder / old).unlink(missing_ok=True)
            del ledger[old]
            log.info("removed %s from %s (replaced by %s)", old, folder, file_name)
        _write_ledger(folder, ledger)


def read_ledger(folder: Path) -> dict[str, dict[str, Any]]:
    """The deployment ledger: file name -> {group, sha256, deployed_at}; empty when absent or unreadable."""
    path = folder / DEPLOYED_LEDGER
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring an unreadable deployment ledger %s (%s); older deployed LoRAs stay", path, exc)
        return {}
    files = payload.get("files") if isinstance(payload, dict) else None
    return {str(k): v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def _write_ledger(folder: Path, ledger: dict[str, dict[str, Any]]) -> None:
    path = folder / DEPLOYED_LEDGER
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    temporary.write_text(json.dumps({"version": 1, "files": ledger}, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)


@contextlib.contextmanager
def _ledger_lock(folder: Path) -> Iterator[None]:
    """One deployer at a time edits the ledger (two personas' runs may deploy at once): an exclusive flock on the
    folder itself, so no lock file is left in ComfyUI's loras folder."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _age_s(entry: dict[str, Any], now: dt.datetime) -> float:
    """Seconds since the ledger entry was last deployed; an unreadable stamp counts as old."""
    try:
        return (now - dt.datetime.fromisoformat(str(entry.get("deployed_at")))).total_seconds()
    except ValueError:
        return float("inf")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same_content(source: Path, target: Path) -> bool:
    return target.is_file() and target.stat().st_size == source.stat().st_size and _sha256(target) == _sha256(source)


def _atomic_copy(source: Path, target: Path) -> None:
    """Copy to a hidden temporary name ComfyUI ignores (wrong extension), then rename: ComfyUI never lists,
    and never loads, a half-written LoRA."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        shutil.copyfile(source, temporary)
        with temporary.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
