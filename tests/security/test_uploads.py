"""Hostile uploads (issue 11): links out of the media root, a FIFO, /dev/zero, bombs, disguised files, odd names.

The real `training_images` and `image_captions` assets run on a media folder seeded with every trick at once,
and the real upload sensor ticks over it. Each test asserts what must never happen: a read outside the root
(a planted secret and an outside photo must appear in no output, event or manifest), a wait on a FIFO, a
changed upload. A FIFO tripwire turns a reader that would hang into a failing assertion.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value
from PIL import Image

from influencer_pipeline.dagster_layer.resources import LocalMediaStoreResource, SidecarCaptionerResource, UploadPolicy
from influencer_pipeline.defs.datasets.assets import image_captions, training_images
from influencer_pipeline.defs.datasets.sensors import upload_sensor
from influencer_pipeline.ingest import IngestSettings, curate
from influencer_pipeline.media import LocalMediaStore
from tests.images import encode, make_photo, png_bomb
from tests.tripwire import FifoTripwire

SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "personas" / "ava"
LONG_NAME = "n" * 246 + ".jpg"  # 250 characters, within the 255-byte limit of common file systems
ODD_NAMES = ("a..b.jpg", "new\nline.jpg", LONG_NAME)
# What each hostile entry must be rejected for, as the rejection table's `file` column names it.
EXPECTED_REJECTIONS = {
    "ava_13.txt": "symbolic link",  # caption sidecar linked to a secret outside the root
    "outside.jpg": "symbolic link",  # photo outside the root
    "album/": "symbolic link",  # folder of photos outside the root
    "zero.jpg": "symbolic link",  # /dev/zero: an endless read
    "pipe.jpg": "not a regular file",  # a FIFO: a reader waits for a writer forever
    "bomb.png": "decompression bomb",  # 20000 x 20000: 400 megapixels from a few KB
    "vector.jpg": "not an image",  # SVG
    "page.jpg": "HTML",
    "archive.jpg": "not an image",  # zip
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder` without following links: type, and for files their bytes and mtime."""
    state: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = os.lstat(path)
            rel = path.relative_to(folder).as_posix()
            if stat.S_ISLNK(info.st_mode):
                state[rel] = f"link -> {os.readlink(path)}"
            elif stat.S_ISREG(info.st_mode):
                state[rel] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {info.st_mtime_ns} {info.st_mode:o}"
            else:
                state[rel] = f"type {stat.S_IFMT(info.st_mode):o} mode {info.st_mode:o}"
    return state


def regular_file_bytes(folder: Path) -> Iterator[tuple[Path, bytes]]:
    """The bytes of every regular file under `folder`, links never followed (so a leak is a real copy)."""
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                yield path, path.read_bytes()


class Hostile:
    """A media root whose `uploads/ava/` holds the sample persona plus every hostile entry, and an outside
    folder holding a secret and photos that must never be read."""

    def __init__(self, base: Path) -> None:
        self.root = base / "media"
        self.outside = base / "outside"
        self.uploads = self.root / "uploads" / "ava"
        self.secret = f"PLANTED-SECRET-{uuid.uuid4().hex}"
        self.outside.mkdir(parents=True)
        (self.outside / "secret.txt").write_text(self.secret + "\n")
        self.outside_photo = encode(make_photo(901), "JPEG", quality=92)
        (self.outside / "photo.jpg").write_bytes(self.outside_photo)
        (self.outside / "album").mkdir()
        self.album_photo = encode(make_photo(902), "JPEG", quality=92)
        (self.outside / "album" / "inside_album.jpg").write_bytes(self.album_photo)
        self.uploads.mkdir(parents=True)
        shutil.copytree(SAMPLE, self.uploads, dirs_exist_ok=True)
        assert not (self.uploads / "ava_13.txt").exists()
        os.symlink(self.outside / "secret.txt", self.uploads / "ava_13.txt")
        os.symlink(self.outside / "photo.jpg", self.uploads / "outside.jpg")
        os.symlink(self.outside / "album", self.uploads / "album")
        os.symlink("/dev/zero", self.uploads / "zero.jpg")
        self.fifo = FifoTripwire(self.uploads / "pipe.jpg")
        (self.uploads / "bomb.png").write_bytes(png_bomb(20_000, 20_000))
        svg = '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"></svg>'
        (self.uploads / "vector.jpg").write_text(svg)
        (self.uploads / "page.jpg").write_text("<!DOCTYPE html><html><body><img src=x></body></html>")
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("photo.jpg", self.outside_photo)
        (self.uploads / "archive.jpg").write_bytes(archive.getvalue())
        for seed, name in enumerate(ODD_NAMES, start=910):
            (self.uploads / name).write_bytes(encode(make_photo(seed), "JPEG", quality=92))

    def outside_hashes(self) -> set[str]:
        return {hashlib.sha256(data).hexdigest() for data in (self.outside_photo, self.album_photo)}


@pytest.fixture
def hostile(tmp_path) -> Iterator[Hostile]:
    corpus = Hostile(tmp_path)
    yield corpus
    corpus.fifo.close()


def materialize(root: Path, **kw) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    """Both dataset assets for partition `ava`, as the UI's Materialize does; also the run's event log."""
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        result = dg.materialize(
            [training_images, image_captions],
            partition_key="ava",
            instance=instance,
            resources={"media": LocalMediaStoreResource(root=str(root)), "captioner": SidecarCaptionerResource()},
            raise_on_error=False,
            **kw,
        )
        logs = [serialize_value(entry) for entry in instance.all_logs(result.run_id)]
    return result, logs


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def test_hostile_uploads_are_rejected_with_the_reason_and_nothing_outside_is_read(hostile: Hostile) -> None:
    uploads_before, outside_before = snapshot(hostile.root / "uploads"), snapshot(hostile.outside)

    result, logs = materialize(hostile.root)

    assert not hostile.fifo.opened.is_set(), "the FIFO upload was opened for reading (a reader would hang)"
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    table = metadata(result, "training_images")["rejections"].records
    reasons = {row.data["file"]: row.data["reason"] for row in table}
    for name, reason in EXPECTED_REJECTIONS.items():
        assert reason in reasons.get(name, ""), (name, reasons.get(name))
    by_name = {row["source_key"].removeprefix("uploads/ava/"): row for row in _manifest_rows(hostile.root)}
    for name in ODD_NAMES:  # odd but harmless names are curated like any photo
        assert by_name[name]["status"] == "kept", (name, by_name[name]["reason"])
    assert not hostile.outside_hashes() & {row["sha256"] for row in by_name.values()}

    assert snapshot(hostile.root / "uploads") == uploads_before, "an upload was changed"
    assert snapshot(hostile.outside) == outside_before
    serialized = "\n".join([*logs, *(serialize_value(event) for event in result.all_events)])
    assert hostile.secret not in serialized
    for path, data in regular_file_bytes(hostile.root / "personas"):
        assert hostile.secret.encode() not in data, path
    captions = metadata(result, "image_captions")["caption_table"].records
    assert all(hostile.secret not in row.data["caption"] for row in captions)


def _manifest_rows(root: Path) -> list[dict]:
    return json.loads((root / "personas/ava/manifests/training_images.json").read_text())["images"]


def test_pillow_refuses_the_bomb_even_when_max_pixels_is_raised(tmp_path) -> None:
    """max_pixels is ours; above Pillow's own limit (twice `Image.MAX_IMAGE_PIXELS`) Pillow refuses from the
    header, so raising max_pixels can never make a 400-megapixel PNG decode (only its header is read)."""
    assert Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < 20_000 * 20_000
    store = LocalMediaStore(tmp_path)
    store.write_bytes("uploads/ava/bomb.png", png_bomb(20_000, 20_000))
    report = curate(store, "ava", IngestSettings(max_pixels=10**9, workers=1))
    (record,) = report.records
    assert record.status == "rejected"
    assert record.reason.startswith("decompression bomb")
    assert "400000000 pixels" in record.reason and "resize the image" in record.reason


def test_upload_sensor_skips_links_and_never_waits_on_a_fifo(hostile: Hostile) -> None:
    """One tick over the hostile root: only the real persona gets a run; the linked persona folder is ignored."""
    outside_persona = hostile.outside / "evil"
    outside_persona.mkdir()
    (outside_persona / "photo.jpg").write_bytes(hostile.outside_photo)
    os.symlink(outside_persona, hostile.root / "uploads" / "evil")
    (hostile.uploads / "READY").write_bytes(b"")
    uploads_before = snapshot(hostile.root / "uploads")
    resources = {"media": LocalMediaStoreResource(root=str(hostile.root)), "upload_policy": UploadPolicy()}

    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(instance=instance, resources=resources) as context,
    ):
        result = upload_sensor(context)

    assert not hostile.fifo.opened.is_set(), "the sensor opened the FIFO upload for reading"
    assert [r.partition_key for r in result.run_requests] == ["ava"]
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests] == [["ava"]]
    assert snapshot(hostile.root / "uploads") == uploads_before
