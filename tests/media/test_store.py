import pytest

from influencer_pipeline.media import LocalMediaStore, MediaStore


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
