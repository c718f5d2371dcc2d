import os

import pytest

from influencer_pipeline.media import LocalMediaStore, MediaObject, MediaStore, UnsafeMediaError
from influencer_pipeline.media.store import NOT_REGULAR, SYMLINK, TOO_LARGE
from tests.tripwire import FifoTripwire


def test_write_read_list_delete_roundtrip(store: MediaStore) -> None:
    store.write_bytes("uploads/ava/a.jpg", b"one")
    store.write_bytes("uploads/ava/sub/b.jpg", b"two")
    store.write_bytes("uploads/bob/c.jpg", b"three")
    assert store.read_bytes("uploads/ava/a.jpg") == b"one"
    listed = {o.key: o.size for o in store.list("uploads/ava/")}
    assert listed == {"uploads/ava/a.jpg": 3, "uploads/ava/sub/b.jpg": 3}
    assert store.list_children("uploads") == ["ava", "bob"]
    assert store.exists("uploads/bob/c.jpg")
    store.delete("uploads/bob/c.jpg")
    assert not store.exists("uploads/bob/c.jpg")
    assert list(store.list("nothing/here/")) == []


def test_digest_depends_on_content_only(store: MediaStore) -> None:
    store.write_bytes("x/a.bin", b"same bytes")
    store.write_bytes("y/b.bin", b"same bytes")
    store.write_bytes("y/c.bin", b"other bytes")
    objects = {o.key: o for o in [*store.list("x/"), *store.list("y/")]}
    a, b, c = objects["x/a.bin"], objects["y/b.bin"], objects["y/c.bin"]
    assert store.digest(a) == store.digest(b)
    assert store.digest(a) != store.digest(c)


def test_overwrite_replaces_content(store: MediaStore) -> None:
    store.write_bytes("k/v.txt", b"first")
    store.write_bytes("k/v.txt", b"second version")
    assert store.read_bytes("k/v.txt") == b"second version"
    assert [o.size for o in store.list("k/")] == [len(b"second version")]


@pytest.mark.parametrize("key", ["/abs/path", "a/../b", "a//b", "../x"])
def test_unsafe_keys_are_refused(store: MediaStore, key: str) -> None:
    with pytest.raises(ValueError, match="not a relative"):
        store.write_bytes(key, b"x")


def test_s3_store_keeps_objects_under_its_prefix(s3_bucket) -> None:
    from influencer_pipeline.media import S3MediaStore

    client, bucket = s3_bucket
    S3MediaStore(client, bucket, prefix="team-a").write_bytes("personas/ava/x.png", b"png")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["team-a/personas/ava/x.png"]
    assert S3MediaStore(client, bucket, prefix="team-a").uri("k") == f"s3://{bucket}/team-a/k"


def test_local_change_token_moves_when_a_file_is_added(tmp_path) -> None:
    store = LocalMediaStore(tmp_path)
    store.write_bytes("uploads/ava/a.jpg", b"1")
    before = store.change_token("uploads/ava/")
    store.write_bytes("uploads/ava/b.jpg", b"2")
    assert store.change_token("uploads/ava/") != before
    assert store.change_token("uploads/nobody/") is None


def test_local_writes_leave_no_temporary_files(tmp_path) -> None:
    store = LocalMediaStore(tmp_path)
    for i in range(3):
        store.write_bytes("p/f.bin", bytes([i]) * 10)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["f.bin"]


# -- staying inside the root (issue 11) ----------------------------------------------------------------------


@pytest.fixture
def linked(tmp_path):
    """A local store whose `uploads/ava/` mixes real files with links out of the root and a FIFO."""
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(b"PLANTED-SECRET")
    (outside / "folder" / "inner.jpg").write_bytes(b"outside image")
    store = LocalMediaStore(tmp_path / "media")
    store.write_bytes("uploads/ava/real.jpg", b"real")
    store.write_bytes("uploads/ava/nested/deep.jpg", b"deep")
    ava = tmp_path / "media" / "uploads" / "ava"
    os.symlink(outside / "secret.txt", ava / "leak.txt")
    os.symlink(outside / "folder", ava / "album")
    os.symlink(ava / "real.jpg", ava / "alias.jpg")  # even a link that stays inside is not followed
    os.symlink(outside, tmp_path / "media" / "uploads" / "evil")
    tripwire = FifoTripwire(ava / "pipe.jpg")
    yield store, tripwire
    tripwire.close()


def test_local_listing_skips_links_and_special_files_and_reports_them(linked) -> None:
    store, tripwire = linked
    assert sorted(o.key for o in store.list("uploads/ava/")) == ["uploads/ava/nested/deep.jpg", "uploads/ava/real.jpg"]
    assert {(e.key, e.reason) for e in store.refused("uploads/ava/")} == {
        ("uploads/ava/album/", SYMLINK),
        ("uploads/ava/alias.jpg", SYMLINK),
        ("uploads/ava/leak.txt", SYMLINK),
        ("uploads/ava/pipe.jpg", NOT_REGULAR),
    }
    assert store.list_children("uploads") == ["ava"]
    assert [e.key for e in store.refused("uploads/", recursive=False)] == ["uploads/evil/"]
    assert not tripwire.opened.is_set()


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("uploads/ava/leak.txt", SYMLINK),
        ("uploads/ava/alias.jpg", SYMLINK),
        ("uploads/ava/album/inner.jpg", SYMLINK),
        ("uploads/evil/secret.txt", SYMLINK),
        ("uploads/ava/pipe.jpg", NOT_REGULAR),
    ],
)
def test_local_reads_never_follow_a_link_nor_wait_on_a_fifo(linked, key: str, reason: str) -> None:
    store, tripwire = linked
    with pytest.raises(UnsafeMediaError) as err:
        store.read_bytes(key)
    assert err.value.reason == reason and key in err.value.where
    assert "PLANTED-SECRET" not in str(err.value)
    assert not store.exists(key)
    with pytest.raises(UnsafeMediaError):
        store.digest(MediaObject(key, 0, 0.0, ""))
    if reason == SYMLINK:  # the FIFO itself is opened, non-blocking, for fstat: no reader ever waits on it
        assert not tripwire.opened.is_set()


def test_local_writes_through_a_link_out_of_the_root_are_refused(linked, tmp_path) -> None:
    store, _ = linked
    with pytest.raises(UnsafeMediaError, match="leads outside the media folder"):
        store.write_bytes("uploads/evil/planted.txt", b"x")
    assert not (tmp_path / "outside" / "planted.txt").exists()
    with pytest.raises(UnsafeMediaError):
        store.delete("uploads/ava/album/inner.jpg")
    assert (tmp_path / "outside" / "folder" / "inner.jpg").exists()


def test_listing_a_linked_folder_is_refused(linked) -> None:
    store, _ = linked
    with pytest.raises(UnsafeMediaError, match="symbolic link"):
        list(store.list("uploads/evil/"))


def test_local_reads_are_capped(tmp_path) -> None:
    store = LocalMediaStore(tmp_path, max_file_bytes=10)
    store.write_bytes("a/ten.bin", b"0123456789")
    store.write_bytes("a/eleven.bin", b"0123456789A")
    assert store.read_bytes("a/ten.bin") == b"0123456789"
    with pytest.raises(UnsafeMediaError, match="11 bytes, above the 10-byte read limit") as err:
        store.read_bytes("a/eleven.bin")
    assert err.value.reason == TOO_LARGE
    big = next(o for o in store.list("a/") if o.key == "a/eleven.bin")
    with pytest.raises(UnsafeMediaError):
        store.digest(big)


def test_read_limit_and_missing_keys_behave_the_same_on_both_backends(store: MediaStore) -> None:
    store.write_bytes("k/five.bin", b"12345")
    assert store.read_bytes("k/five.bin", max_bytes=5) == b"12345"
    with pytest.raises(UnsafeMediaError) as err:
        store.read_bytes("k/five.bin", max_bytes=4)
    assert err.value.reason == TOO_LARGE
    with pytest.raises(FileNotFoundError):
        store.read_bytes("k/missing.bin")
    assert store.refused("k/") == []


def test_the_read_limit_is_a_resource_setting(tmp_path) -> None:
    from influencer_pipeline.dagster_layer.resources import LocalMediaStoreResource

    store = LocalMediaStoreResource(root=str(tmp_path), max_file_bytes=4).get_store()
    store.write_bytes("a/five.bin", b"12345")
    with pytest.raises(UnsafeMediaError, match="above the 4-byte read limit"):
        store.read_bytes("a/five.bin")
