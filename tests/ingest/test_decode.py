"""Decoding one upload: reduced JPEG decoding, orientation, colour conversion, and what each failure says."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageCms

from influencer_pipeline.ingest.decode import (
    Decoded,
    Rejected,
    check_header,
    draft_size,
    load_upload,
    open_upload,
)
from influencer_pipeline.ingest.settings import IngestSettings

SETTINGS = IngestSettings(workers=1)


def decode(key: str, data: bytes, settings: IngestSettings = SETTINGS) -> Decoded:
    image = open_upload(key, data, settings)
    check_header(key, image, settings)
    return load_upload(key, image, settings)


def reason(key: str, data: bytes, settings: IngestSettings = SETTINGS) -> str:
    with pytest.raises(Rejected) as info:
        decode(key, data, settings)
    assert key in str(info.value), "the exception message names the file"
    return info.value.reason


def rgb(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(image.getpixel(xy))


def test_big_jpeg_is_decoded_reduced_but_reports_its_original_size(encode):
    photo = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    decoded = decode("big.jpg", encode(photo, "JPEG"))
    assert decoded.image.size == (1000, 750), "DCT-scaled by 1/4, still covering the 512 crop"
    assert (decoded.width, decoded.height) == (4000, 3000)


@pytest.mark.parametrize("size", [(4000, 3000), (3000, 4000), (1100, 513), (512, 512)])
def test_draft_size_keeps_the_short_side_at_the_resolution(size):
    width, height = draft_size(size, 512)
    assert min(width, height) == 512
    assert abs(width / height - size[0] / size[1]) < 0.01


def test_exif_orientation_is_applied_and_the_size_is_upright(make_photo, encode):
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = make_photo(1, (600, 800)).transpose(Image.Transpose.ROTATE_90)
    decoded = decode("rotated.jpg", encode(stored, "JPEG", exif=exif))
    assert decoded.image.size == (600, 800)
    assert (decoded.width, decoded.height) == (600, 800)
    assert "applied EXIF orientation 6" in decoded.notes


def test_cmyk_without_profile_is_converted_with_a_note(make_photo, encode):
    photo = make_photo(2, (512, 512))
    decoded = decode("print.jpg", encode(photo.convert("CMYK"), "JPEG"))
    assert decoded.image.mode == "RGB"
    assert any("converted CMYK to sRGB RGB" in note for note in decoded.notes)
    difference = np.abs(np.asarray(decoded.image, float) - np.asarray(photo, float)).mean()
    assert difference < 12, "colours survive the round trip"


def test_cmyk_with_an_unusable_profile_falls_back_and_says_so(make_photo, encode):
    data = encode(make_photo(3, (512, 512)).convert("CMYK"), "JPEG", icc_profile=b"not a profile" * 10)
    notes = decode("print.jpg", data).notes
    assert any("ICC profile unusable" in note for note in notes)
    assert decode("print.jpg", data).image.mode == "RGB"


def _srgb_profile(description: str = "sRGB") -> bytes:
    """The built-in sRGB profile, renamed: a stand-in for a wide-gamut profile that exercises the conversion."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return profile.replace("sRGB".encode("utf-16-be"), description.encode("utf-16-be"))


def test_embedded_non_srgb_profile_is_converted_to_srgb(make_photo, encode):
    data = encode(make_photo(4, (512, 512)), "JPEG", icc_profile=_srgb_profile("Wide"))
    assert "converted embedded ICC profile 'Wide built-in' to sRGB" in decode("wide.jpg", data).notes


def test_embedded_srgb_profile_is_left_alone(make_photo, encode):
    data = encode(make_photo(4, (512, 512)), "JPEG", icc_profile=_srgb_profile())
    assert decode("srgb.jpg", data).notes == []


def test_16_bit_grayscale_is_scaled_not_clipped(encode):
    levels = np.array([[0, 32896, 65535]], dtype=np.uint16).repeat(512, axis=0).repeat(200, axis=1)
    decoded = decode("deep.png", encode(Image.fromarray(levels), "PNG"))
    assert [rgb(decoded.image, (x, 10))[0] for x in (100, 300, 500)] == [0, 128, 255]
    assert any("16-bit" in note for note in decoded.notes)


def test_palette_transparency_is_composited_on_white(make_photo, encode):
    palette = make_photo(5, (512, 512)).quantize(64)
    palette.paste(0, (0, 0, 100, 100))
    decoded = decode("logo.png", encode(palette, "PNG", transparency=0))
    assert rgb(decoded.image, (50, 50)) == (255, 255, 255)
    assert "converted palette (P) image to RGB with its transparency" in decoded.notes
    assert "composited RGBA alpha on white" in decoded.notes


def test_rgba_is_composited_on_white(make_photo, encode):
    photo = make_photo(6, (512, 512)).convert("RGBA")
    photo.paste((0, 0, 0, 0), (0, 0, 100, 100))
    decoded = decode("cutout.png", encode(photo, "PNG"))
    assert rgb(decoded.image, (50, 50)) == (255, 255, 255)
    assert rgb(decoded.image, (300, 300)) == rgb(photo.convert("RGB"), (300, 300))
    assert decoded.notes == ["composited RGBA alpha on white"]


@pytest.mark.parametrize(("mode", "note"), [("L", "converted L to RGB"), ("LA", "composited LA alpha on white")])
def test_grayscale_modes_become_rgb(make_photo, encode, mode, note):
    decoded = decode("gray.png", encode(make_photo(7, (512, 512)).convert(mode), "PNG"))
    assert decoded.image.mode == "RGB"
    assert decoded.notes == [note]


def _gif(make_photo, encode, frames: int) -> bytes:
    images = [make_photo(seed, (512, 512)) for seed in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=100)


def test_animated_gif_uses_the_first_frame_by_default(make_photo, encode):
    decoded = decode("wave.gif", _gif(make_photo, encode, 3))
    assert "animated GIF: used first frame of 3" in decoded.notes
    first = np.asarray(make_photo(0, (512, 512)), float)
    assert np.abs(np.asarray(decoded.image, float) - first).mean() < 10


def test_animated_gif_is_rejected_when_asked(make_photo, encode):
    text = reason("wave.gif", _gif(make_photo, encode, 3), IngestSettings(animated="reject", workers=1))
    assert text.startswith("animated GIF: 3 frames")
    assert "animated='first_frame'" in text


def test_mpo_is_not_an_animation(make_photo, encode):
    left, right = make_photo(8, (512, 512)), make_photo(9, (512, 512))
    data = encode(left, "MPO", save_all=True, append_images=[right])
    decoded = decode("stereo.jpg", data, IngestSettings(animated="reject", workers=1))
    assert "multi-frame MPO: used the primary image of 2" in decoded.notes


def test_content_that_differs_from_the_extension_is_decoded_with_a_note(make_photo, encode):
    decoded = decode("photo.jpg", encode(make_photo(10, (512, 512)), "PNG"))
    assert decoded.notes == ["content is PNG although the file is named .jpg"]


@pytest.mark.parametrize(
    ("key", "data", "expected"),
    [
        ("page.jpg", b"<!DOCTYPE html><html><body>404</body></html>", "not an image: the file contains HTML"),
        ("notes.png", b"just some words\n", "not an image: the file contains text"),
        ("noise.jpg", bytes(range(256)) * 4, "match none of the supported formats (JPEG, PNG"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00\xff" * 200, "corrupt file: it starts like a PNG"),
        ("empty.jpg", b"", "empty file"),
        ("vector.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported format: '.svg' files"),
        ("README", b"hello", "unsupported format: files without an extension"),
    ],
)
def test_unreadable_files_say_what_they_are(key, data, expected):
    text = reason(key, data)
    assert expected in text
    assert "Fix: " in text


def test_truncated_jpeg_is_detected(make_photo, encode):
    data = encode(make_photo(11, (512, 512)), "JPEG")
    assert reason("cut.jpg", data[: len(data) // 2]).startswith("corrupt or truncated file")


def test_bomb_is_refused_from_the_header_before_decoding(png_bomb):
    data = png_bomb(5000, 5000)
    text = reason("bomb.png", data, IngestSettings(max_pixels=20_000_000, workers=1))
    assert text.startswith("decompression bomb: 5000 x 5000 is 25 megapixels, above max_pixels 20 megapixels")


def test_pil_decompression_bomb_error_becomes_a_rejection(png_bomb):
    data = png_bomb(20000, 20000)
    assert len(data) < 100_000, "tiny on disk"
    assert reason("bomb.png", data, IngestSettings(max_pixels=10**12, workers=1)).startswith("decompression bomb")


def test_too_small_names_the_size_and_the_minimum(encode):
    text = reason("thumb.jpg", encode(Image.new("RGB", (640, 480)), "JPEG"))
    assert "too small: 640 x 480 pixels, the short side 480 is below min_short_side 512" in text
