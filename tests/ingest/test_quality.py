"""Quality measures and the crop geometry: the numbers the curation thresholds rely on."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageFilter

from influencer_pipeline.ingest.crop import crop_box, square_crop
from influencer_pipeline.ingest.quality import WORK_SIZE, exposure, hamming, phash, sharpness, working_copy
from influencer_pipeline.ingest.settings import IngestSettings


def gray(image: Image.Image) -> np.ndarray:
    return working_copy(image)


def test_working_copy_has_a_fixed_long_side(make_photo):
    assert gray(make_photo(0, (768, 1024))).shape == (WORK_SIZE, WORK_SIZE * 3 // 4)
    assert gray(make_photo(0, (600, 600))).shape == (WORK_SIZE, WORK_SIZE)


def test_sharpness_falls_with_blur_and_the_default_threshold_splits_sharp_from_soft(make_photo):
    photo = make_photo(1, (512, 512))
    scores = [sharpness(gray(photo.filter(ImageFilter.GaussianBlur(r)))) for r in (0, 1, 2, 4)]
    assert scores == sorted(scores, reverse=True)
    threshold = IngestSettings().min_sharpness
    assert scores[0] > 3 * threshold
    assert scores[2] < threshold


def test_sharpness_of_a_flat_image_is_zero():
    assert sharpness(gray(Image.new("RGB", (64, 64), (90, 90, 90)))) == 0.0


def test_exposure_reports_mean_and_clipping():
    half = Image.fromarray(np.hstack([np.zeros((64, 32), np.uint8), np.full((64, 32), 255, np.uint8)]))
    measured = exposure(gray(half))
    assert measured.brightness == pytest.approx(127.5, abs=1)
    assert measured.dark_fraction == pytest.approx(0.5, abs=0.01)
    assert measured.bright_fraction == pytest.approx(0.5, abs=0.01)


def test_phash_is_64_bits_and_stable(make_photo):
    first, second = phash(gray(make_photo(2))), phash(gray(make_photo(2)))
    assert len(first) == 16 and int(first, 16) >= 0
    assert first == second


def test_phash_survives_resizing_and_recompression(make_photo):
    photo = make_photo(3, (768, 768))
    copy = photo.resize((600, 600), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    copy.save(buffer, "JPEG", quality=60)
    recompressed = Image.open(buffer)
    assert hamming(phash(gray(photo)), phash(gray(recompressed))) <= IngestSettings().duplicate_distance


def test_different_photos_are_far_apart(make_photo):
    hashes = [phash(gray(make_photo(seed, (512, 512)))) for seed in range(12)]
    distances = [hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert min(distances) > 2 * IngestSettings().duplicate_distance


def test_hamming_counts_differing_bits():
    assert hamming("0000000000000000", "0000000000000000") == 0
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming("00000000000000f0", "0000000000000010") == 3


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((4000, 3000), (500, 0, 3500, 3000)),  # landscape: centred
        ((1000, 1000), (0, 0, 1000, 1000)),
        ((1080, 1920), (0, 100, 1080, 1180)),  # 9:16 portrait: centre of the window one third down
        ((768, 1024), (0, 0, 768, 768)),  # 3:4 portrait: the third-down centre clamps to the top
        ((500, 3000), (0, 750, 500, 1250)),
    ],
)
def test_crop_box(size, box):
    assert crop_box(*size) == box


def test_square_crop_size_and_portrait_anchor():
    tall = Image.new("RGB", (600, 1800), "blue")
    tall.paste((255, 0, 0), (0, 300, 600, 900))  # the window one third down
    out = square_crop(tall, 256)
    assert out.size == (256, 256)
    assert out.getpixel((128, 128)) == (255, 0, 0)
