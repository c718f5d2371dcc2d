"""End-to-end curation on generated uploads: a corpus of bad files, convert-and-keep cases, and the store rules."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image, ImageFilter

from influencer_pipeline.errors import InputError
from influencer_pipeline.ingest import CurationReport, IngestSettings, curate
from influencer_pipeline.ingest.contact_sheet import MAX_BYTES, contact_sheet
from influencer_pipeline.media.keys import dataset_prefix
from influencer_pipeline.media.store import LocalMediaStore, MediaStore

PERSONA = "anna"
UPLOADS = f"uploads/{PERSONA}/"
CORPUS_SETTINGS = IngestSettings(workers=1, animated="reject", max_pixels=20_000_000)
SKIPPED = ("persona.yaml", "READY", "p01.txt", "p02.caption", ".DS_Store", ".thumbs/p01.jpg")
# bad upload -> text its rejection reason must contain (the rule it broke)
BAD = {
    "truncated.jpg": "corrupt or truncated file",
    "corrupt.png": "corrupt file: it starts like a PNG",
    "page.jpg": "not an image: the file contains HTML",
    "empty.jpg": "empty file",
    "bomb.png": "decompression bomb: 5000 x 5000",
    "huge-bomb.png": "decompression bomb",
    "small.jpg": "too small: 480 x 360 pixels",
    "drawing.svg": "unsupported format: '.svg'",
    "layers.psd": "unsupported format: '.psd'",
    "blurry.jpg": "too blurry",
    "dark.jpg": "too dark",
    "bright.jpg": "too bright",
    "p01-copy.jpg": "near-duplicate: looks the same as p01.jpg",
    "wave.gif": "animated GIF",
}
GOOD = ("p01.jpg", "p02.jpg", "p03.png", "stereo.jpg")


def snapshot(store: MediaStore, prefix: str) -> dict[str, str]:
    return {obj.key: hashlib.sha256(store.read_bytes(obj.key)).hexdigest() for obj in store.list(prefix)}


def record(report: CurationReport, name: str):
    return next(r for r in report.records if r.source_key == UPLOADS + name)


def _corpus(make_photo, encode, png_bomb) -> dict[str, bytes]:
    p01 = make_photo(1)
    photo = encode(make_photo(20), "JPEG")
    frames = [make_photo(seed, (512, 512)) for seed in (21, 22)]
    copy = p01.resize((691, 922), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(0.6))
    return {
        "p01.jpg": encode(p01, "JPEG"),
        "p02.jpg": encode(make_photo(2), "JPEG"),
        "p03.png": encode(make_photo(3, (640, 512)), "PNG"),
        "stereo.jpg": encode(make_photo(4), "MPO", save_all=True, append_images=[make_photo(5)]),
        "truncated.jpg": photo[: len(photo) // 2],
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
        "page.jpg": b"<!doctype html><html><head><title>Instagram</title></head></html>",
        "empty.jpg": b"",
        "bomb.png": png_bomb(5000, 5000),
        "huge-bomb.png": png_bomb(20000, 20000),
        "small.jpg": encode(make_photo(6, (480, 360)), "JPEG"),
        "drawing.svg": b"<svg xmlns='http://www.w3.org/2000/svg'><circle r='5'/></svg>",
        "layers.psd": b"8BPS\x00\x01" + bytes(64),
        "blurry.jpg": encode(make_photo(7).filter(ImageFilter.GaussianBlur(6)), "JPEG"),
        "dark.jpg": encode(Image.eval(make_photo(8), lambda v: v // 12), "JPEG"),
        "bright.jpg": encode(Image.eval(make_photo(9), lambda v: 255 - (255 - v) // 12), "JPEG"),
        "p01-copy.jpg": encode(copy, "JPEG", quality=75),
        "wave.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        **{name: b"not an upload" for name in SKIPPED},
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_photo, encode, png_bomb):
    """One curation of the whole corpus; returns (store, report, uploads before, progress messages)."""
    store = LocalMediaStore(tmp_path_factory.mktemp("corpus"))
    for name, data in _corpus(make_photo, encode, png_bomb).items():
        store.write_bytes(UPLOADS + name, data)
    before = snapshot(store, UPLOADS)
    messages: list[str] = []
    report = curate(store, PERSONA, CORPUS_SETTINGS, progress=messages.append)
    return store, report, before, messages


def test_corpus_covers_at_least_twelve_kinds_of_bad_file():
    assert len(BAD) >= 12


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_upload_is_rejected_naming_the_rule_and_the_fix(corpus, name):
    found = record(corpus[1], name)
    assert found.status == "rejected"
    assert BAD[name] in found.reason
    assert "Fix: " in found.reason
    assert found.image_id is None and found.output_key is None


@pytest.mark.parametrize("name", GOOD)
def test_good_upload_is_kept_as_a_square_png(corpus, name):
    store, report = corpus[0], corpus[1]
    found = record(report, name)
    assert (found.status, found.reason) == ("kept", "")
    assert found.output_key == f"{dataset_prefix(PERSONA)}{found.sha256[:16]}.png"
    image = Image.open(io.BytesIO(store.read_bytes(found.output_key)))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (512, 512))


def test_mpo_is_kept_even_when_animations_are_rejected(corpus):
    found = record(corpus[1], "stereo.jpg")
    assert found.format == "MPO"
    assert "multi-frame MPO: used the primary image of 2" in found.notes


def test_near_duplicate_keeps_the_sharper_copy(corpus):
    original, copy = record(corpus[1], "p01.jpg"), record(corpus[1], "p01-copy.jpg")
    assert original.status == "kept"
    assert copy.sharpness is not None and original.sharpness is not None
    assert copy.sharpness < original.sharpness
    assert "perceptual-hash distance" in copy.reason


def test_profile_markers_sidecars_and_dotfiles_are_not_recorded(corpus):
    recorded = {r.source_key for r in corpus[1].records}
    assert recorded == {UPLOADS + name for name in (*BAD, *GOOD)}


def test_uploads_are_unchanged_and_never_deleted(corpus):
    store, _, before, _ = corpus
    assert snapshot(store, UPLOADS) == before


def test_dataset_folder_holds_exactly_the_kept_images(corpus):
    store, report = corpus[0], corpus[1]
    written = {obj.key for obj in store.list(dataset_prefix(PERSONA))}
    assert written == {r.output_key for r in report.kept}


def test_manifest_records_every_upload_in_key_order(corpus):
    store, report = corpus[0], corpus[1]
    manifest = json.loads(store.read_bytes(report.manifest_key))
    assert manifest["persona"] == PERSONA
    assert manifest["settings"]["animated"] == "reject"
    assert "workers" not in manifest["settings"]
    assert manifest["images"] == [asdict(r) for r in report.records]
    assert [r["source_key"] for r in manifest["images"]] == sorted(r.source_key for r in report.records)


def test_contact_sheet_is_a_small_jpeg(corpus):
    store, report = corpus[0], corpus[1]
    assert store.read_bytes(report.contact_sheet_key) == report.contact_sheet_jpeg
    assert len(report.contact_sheet_jpeg) < 150_000
    assert Image.open(io.BytesIO(report.contact_sheet_jpeg)).format == "JPEG"


def test_progress_reports_counts(corpus):
    report, messages = corpus[1], corpus[3]
    assert messages[0] == f"{PERSONA}: curated 10/{len(report.records)} uploads"
    assert messages[-1].startswith(f"{PERSONA}: curated {len(report.records)} uploads: 4 kept, 14 rejected (")
    assert "1 too blurry" in messages[-1]


def test_report_summaries(corpus):
    report = corpus[1]
    assert len(report.kept) + len(report.rejected) == len(report.records)
    assert report.mean_sharpness == pytest.approx(np.mean([r.sharpness for r in report.kept]))


def test_two_workers_give_the_same_manifest(corpus):
    store, report = corpus[0], corpus[1]
    first = store.read_bytes(report.manifest_key)
    again = curate(store, PERSONA, IngestSettings(workers=2, animated="reject", max_pixels=20_000_000))
    assert store.read_bytes(again.manifest_key) == first


def _rotated_with_marker(make_photo, encode) -> bytes:
    """An upright portrait with a red band at the top, stored rotated with EXIF orientation 6."""
    upright = make_photo(30, (600, 800))
    upright.paste((230, 20, 20), (0, 0, 600, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif)


def _palette_with_transparency(make_photo, encode) -> bytes:
    palette = make_photo(31, (512, 512)).quantize(64)
    palette.paste(0, (200, 200, 260, 260))
    return encode(palette, "PNG", transparency=0)


def _sixteen_bit(make_photo, encode) -> bytes:
    levels = np.asarray(make_photo(32, (512, 640)).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(levels), "PNG")


def _rgba(make_photo, encode) -> bytes:
    photo = make_photo(33, (512, 512)).convert("RGBA")
    photo.paste((0, 0, 0, 0), (0, 0, 80, 80))
    return encode(photo, "PNG")


# upload -> (bytes maker, the notes its record must carry)
CONVERTED = {
    "cmyk.jpg": (
        lambda mp, enc: enc(mp(34).convert("CMYK"), "JPEG"),
        ["converted CMYK to sRGB RGB (no usable ICC profile: approximate colours)"],
    ),
    "deep.png": (_sixteen_bit, ["converted I;16 (16-bit) grayscale to 8-bit", "converted L to RGB"]),
    "logo.png": (
        _palette_with_transparency,
        ["converted palette (P) image to RGB with its transparency", "composited RGBA alpha on white"],
    ),
    "cutout.png": (_rgba, ["composited RGBA alpha on white"]),
    "rotated.jpg": (_rotated_with_marker, ["applied EXIF orientation 6"]),
    "wave.gif": (
        lambda mp, enc: enc(mp(35, (512, 512)), "GIF", save_all=True, append_images=[mp(36, (512, 512))]),
        ["animated GIF: used first frame of 2", "converted palette (P) image to RGB"],
    ),
    "photo.webp": (lambda mp, enc: enc(mp(37), "WEBP", quality=90), []),
    "photo.bmp": (lambda mp, enc: enc(mp(38, (512, 512)), "BMP"), []),
    "photo.tiff": (lambda mp, enc: enc(mp(39, (512, 512)), "TIFF"), []),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, make_photo, encode):
    store = LocalMediaStore(tmp_path_factory.mktemp("converted"))
    for name, (maker, _) in CONVERTED.items():
        store.write_bytes(UPLOADS + name, maker(make_photo, encode))
    return store, curate(store, PERSONA, IngestSettings(workers=1))


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_convertible_upload_is_kept_with_a_note(converted, name):
    found = record(converted[1], name)
    assert (found.status, found.reason) == ("kept", "")
    assert found.notes == CONVERTED[name][1]


def test_exif_rotated_photo_comes_out_upright(converted):
    store, report = converted
    found = record(report, "rotated.jpg")
    assert (found.width, found.height) == (600, 800)
    pixels = np.asarray(Image.open(io.BytesIO(store.read_bytes(found.output_key))), dtype=float)
    top, bottom = pixels[5:30].mean(axis=(0, 1)), pixels[-30:-5].mean(axis=(0, 1))
    assert top[0] > 180 and top[1] < 80 and top[2] < 80, "the red band is at the top"
    assert not (bottom[0] > 180 and bottom[1] < 80)


def _stale_setup(store: MediaStore, make_photo, encode) -> CurationReport:
    for seed in range(3):
        store.write_bytes(f"{UPLOADS}p{seed}.jpg", encode(make_photo(seed, (512, 640)), "JPEG"))
    report = curate(store, PERSONA, IngestSettings(workers=1))
    for kept in report.kept:
        store.write_bytes(f"{dataset_prefix(PERSONA)}{kept.image_id}.txt", b"anna, a person")
    return report


def test_rerun_removes_the_curated_image_and_caption_of_a_removed_upload(store, make_photo, encode):
    first = _stale_setup(store, make_photo, encode)
    gone = record(first, "p1.jpg")
    store.delete(gone.source_key)  # the person removes the upload; curation itself never does
    second = curate(store, PERSONA, IngestSettings(workers=1))
    names = {obj.key.rsplit("/", 1)[1] for obj in store.list(dataset_prefix(PERSONA))}
    assert names == {f"{r.image_id}{suffix}" for r in second.kept for suffix in (".png", ".txt")}
    assert f"{gone.image_id}.png" not in names and len(second.kept) == 2


def test_same_input_gives_the_same_manifest(store, make_photo, encode):
    first = _stale_setup(store, make_photo, encode)
    manifest = store.read_bytes(first.manifest_key)
    assert store.read_bytes(curate(store, PERSONA, IngestSettings(workers=1)).manifest_key) == manifest


def test_a_persona_without_uploads_gets_an_empty_report(store):
    report = curate(store, PERSONA, IngestSettings(workers=1))
    assert report.records == [] and report.mean_sharpness == 0.0
    assert Image.open(io.BytesIO(report.contact_sheet_jpeg)).format == "JPEG"
    assert json.loads(store.read_bytes(report.manifest_key))["images"] == []


def test_invalid_persona_is_refused(store):
    with pytest.raises(InputError, match="not a valid persona key"):
        curate(store, "Anna Smith")


@pytest.mark.parametrize(
    ("field", "value"), [("animated", "loop"), ("workers", 0), ("min_brightness", 240.0), ("resolution", 8)]
)
def test_invalid_settings_are_refused(field, value):
    with pytest.raises(InputError, match=field):
        IngestSettings(**{field: value})


def test_contact_sheet_stays_small_with_many_noisy_images():
    rng = np.random.default_rng(0)
    tiles = [Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)) for _ in range(300)]
    assert len(contact_sheet(tiles)) <= MAX_BYTES
