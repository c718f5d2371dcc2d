"""Upload change detection: settle window, READY marker, content-derived run keys, cost proportional to change."""

import os

from influencer_pipeline.media import LocalMediaStore, MediaStore
from influencer_pipeline.uploads import UploadCursor, scan
from tests.tripwire import FifoTripwire

SETTLE = 60.0


def tick(store: MediaStore, cursor: UploadCursor, now: float, **kwargs):
    result = scan(store, UploadCursor.parse(cursor.serialize()), now=now, settle_seconds=SETTLE, **kwargs)
    return result, result.cursor


def upload(store: MediaStore, persona: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        store.write_bytes(f"uploads/{persona}/{name}", data)


def test_new_persona_waits_for_settle_then_is_ready_once(store: MediaStore) -> None:
    upload(store, "ava", {"a.jpg": b"A", "b.jpg": b"B"})
    first, cursor = tick(store, UploadCursor(), now=1000)
    assert first.new_personas == ["ava"]
    assert first.ready == [] and first.waiting == ["ava"]

    early, cursor = tick(store, cursor, now=1000 + SETTLE - 1)
    assert early.ready == [] and early.new_personas == []

    settled, cursor = tick(store, cursor, now=1000 + SETTLE)
    assert [r.persona for r in settled.ready] == ["ava"]
    assert settled.ready[0].files == 2

    again, cursor = tick(store, cursor, now=5000)
    assert again.ready == [] and again.new_personas == []


def test_ready_marker_skips_the_settle_window(store: MediaStore) -> None:
    upload(store, "ava", {"a.jpg": b"A", "READY": b""})
    result, _ = tick(store, UploadCursor(), now=1000)
    assert [r.persona for r in result.ready] == ["ava"]
    assert result.ready[0].files == 1  # the marker is not data


def test_require_ready_marker_waits_forever_without_one(store: MediaStore) -> None:
    upload(store, "ava", {"a.jpg": b"A"})
    _, cursor = tick(store, UploadCursor(), now=0, require_ready_marker=True)
    result, cursor = tick(store, cursor, now=10_000, require_ready_marker=True)
    assert result.ready == []
    upload(store, "ava", {"READY": b""})
    result, _ = tick(store, cursor, now=10_001, require_ready_marker=True)
    assert [r.persona for r in result.ready] == ["ava"]


def test_changed_dataset_gets_a_new_run_key_identical_reupload_does_not(store: MediaStore) -> None:
    upload(store, "ava", {"a.jpg": b"A", "b.jpg": b"B"})
    _, cursor = tick(store, UploadCursor(), now=0)
    first, cursor = tick(store, cursor, now=SETTLE)
    key1 = first.ready[0].run_key

    upload(store, "ava", {"a.jpg": b"A", "b.jpg": b"B"})  # identical bytes re-uploaded (new mtimes, new listing)
    _, cursor = tick(store, cursor, now=1000)
    same, cursor = tick(store, cursor, now=1000 + SETTLE, full_scan_seconds=0)
    assert same.ready == []

    upload(store, "ava", {"c.jpg": b"C"})
    _, cursor = tick(store, cursor, now=2000)
    changed, cursor = tick(store, cursor, now=2000 + SETTLE)
    assert changed.ready[0].run_key != key1
    assert changed.ready[0].files == 3


def test_run_key_is_derived_from_content_so_a_lost_cursor_repeats_it(store: MediaStore, tmp_path) -> None:
    upload(store, "ava", {"a.jpg": b"A", "READY": b""})
    one, _ = tick(store, UploadCursor(), now=0)
    two, _ = tick(store, UploadCursor(), now=99)
    assert one.ready[0].run_key == two.ready[0].run_key

    other = LocalMediaStore(tmp_path / "elsewhere")
    upload(other, "ava", {"a.jpg": b"A", "READY": b""})
    three, _ = tick(other, UploadCursor(), now=0)
    if isinstance(store, LocalMediaStore):
        assert three.ready[0].run_key == one.ready[0].run_key


def test_invalid_folder_names_are_reported_once_and_never_touched(store: MediaStore) -> None:
    upload(store, "Bad Name", {"a.jpg": b"A"})
    upload(store, "ava", {"a.jpg": b"A", "READY": b""})
    first, cursor = tick(store, UploadCursor(), now=0)
    assert [e.where for e in first.newly_invalid] == ["uploads/Bad Name/"]
    assert "rename the folder to 'bad-name'" in str(first.newly_invalid[0])
    assert [r.persona for r in first.ready] == ["ava"]
    second, _ = tick(store, cursor, now=1)
    assert second.newly_invalid == []
    assert store.read_bytes("uploads/Bad Name/a.jpg") == b"A"


def test_empty_folder_adds_a_persona_but_no_run(store: MediaStore) -> None:
    store.write_bytes("uploads/ava/.keep", b"")
    result, _ = tick(store, UploadCursor(), now=0)
    assert result.new_personas == ["ava"]
    assert result.ready == [] and result.waiting == []


def test_local_tick_cost_follows_changes_not_files(tmp_path) -> None:
    store = LocalMediaStore(tmp_path)
    for persona in ("p1", "p2", "p3"):
        upload(store, persona, {f"{i}.jpg": bytes([i]) for i in range(50)} | {"READY": b""})
    first, cursor = tick(store, UploadCursor(), now=0)
    assert first.folders_listed == 3 and len(first.ready) == 3

    quiet, cursor = tick(store, cursor, now=10)
    assert quiet.folders_listed == 0  # nothing changed: one stat per folder, no listing, no hashing

    upload(store, "p2", {"new.jpg": b"new"})
    one_change, cursor = tick(store, cursor, now=20)
    assert one_change.folders_listed == 1
    assert [r.persona for r in one_change.ready] == ["p2"]


def test_periodic_full_scan_catches_in_place_overwrites(tmp_path) -> None:
    store = LocalMediaStore(tmp_path)
    upload(store, "ava", {"a.jpg": b"A", "READY": b""})
    first, cursor = tick(store, UploadCursor(), now=0, full_scan_seconds=300)
    (tmp_path / "uploads/ava/a.jpg").write_bytes(b"edited in place")  # folder mtime does not move
    quiet, cursor = tick(store, cursor, now=100, full_scan_seconds=300)
    assert quiet.ready == []
    full, _ = tick(store, cursor, now=400, full_scan_seconds=300)
    assert [r.persona for r in full.ready] == ["ava"]
    assert full.ready[0].run_key != first.ready[0].run_key


def test_links_and_fifos_neither_count_nor_block_and_a_linked_persona_is_reported_once(tmp_path) -> None:
    """Issue 11: the scan lists only regular files, so a FIFO never makes the sensor wait and a link out of
    the root never becomes a persona or part of a dataset's content."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "photo.jpg").write_bytes(b"outside")
    store = LocalMediaStore(tmp_path / "media")
    upload(store, "ava", {"a.jpg": b"A", "READY": b""})
    os.symlink(outside / "photo.jpg", tmp_path / "media" / "uploads" / "ava" / "linked.jpg")
    os.symlink(outside, tmp_path / "media" / "uploads" / "evil")
    tripwire = FifoTripwire(tmp_path / "media" / "uploads" / "ava" / "pipe.jpg")
    try:
        result, cursor = tick(store, UploadCursor(), now=1000)
        again, _ = tick(store, cursor, now=2000)
    finally:
        tripwire.close()
    assert not tripwire.opened.is_set()
    assert [(r.persona, r.files) for r in result.ready] == [("ava", 1)]
    assert [str(err) for err in result.newly_invalid] == [
        "uploads/evil/: ignored: symbolic link: links are never followed, they can lead outside the media folder. "
        "Fix: copy the file or folder itself into the media folder instead of linking to it"
    ]
    assert again.newly_invalid == [] and again.ready == []


def test_files_over_the_read_limit_do_not_hold_the_folder_back(tmp_path) -> None:
    """A file the run will reject unread (over the store's limit, or a persona.yaml over 64 KB) is not hashed:
    the folder still settles and its run is requested, and the run's rejection table says why."""
    store = LocalMediaStore(tmp_path / "media", max_file_bytes=100_000)
    upload(store, "ava", {"a.jpg": b"A", "huge.jpg": b"x" * 100_001, "persona.yaml": b"#" * 70_000, "READY": b""})
    result, _ = tick(store, UploadCursor(), now=1000)
    assert result.waiting == []
    assert [(r.persona, r.files) for r in result.ready] == [("ava", 3)]
