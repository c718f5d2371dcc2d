"""Pre-flight per platform: text limits, image fixes, video fixes, and the problems that are never auto-fixed.

Media is made at test time: pictures with Pillow, small videos with the bundled ffmpeg's lavfi sources (360x640, a
few seconds, so every encode takes a fraction of a second). Originals are hashed before and after each fix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from influencer_pipeline.errors import InputError
from influencer_pipeline.publishing.preflight import RULES, compose_caption, preflight
from influencer_pipeline.video import ffmpeg, probe

VERTICAL = (360, 640)


def make_video(
    path: Path,
    *,
    seconds: float = 3.5,
    size: tuple[int, int] = VERTICAL,
    fps: int = 24,
    pix_fmt: str = "yuv420p",
    faststart: bool = True,
) -> Path:
    """H.264 + AAC 48 kHz in MP4; `faststart=False` leaves the muxer's default (moov after mdat)."""
    sources = ["-f", "lavfi", "-i", f"testsrc2=s={size[0]}x{size[1]}:r={fps}:d={seconds}"]
    sources += ["-f", "lavfi", "-i", f"sine=f=440:r=48000:d={seconds}"]
    codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix_fmt, "-c:a", "aac", "-shortest"]
    flags = ["-movflags", "+faststart"] if faststart else []
    ffmpeg.run([*sources, *codecs, *flags, str(path)], what="making a test video")
    return path


def make_long_video(path: Path, seconds: int) -> Path:
    """A long video made cheaply: one second of flat colour, looped by stream copy (no encode of the length)."""
    second = path.with_name("one-second.mp4")
    ffmpeg.run(
        [
            "-f",
            "lavfi",
            "-i",
            "color=c=teal:s=360x640:r=24:d=1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            str(second),
        ],
        what="making one second of video",
    )
    ffmpeg.run(
        [
            "-stream_loop",
            "-1",
            "-i",
            str(second),
            "-t",
            str(seconds),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            str(path),
        ],
        what="looping it",
    )
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_photo(path: Path, size: tuple[int, int], **options) -> Path:
    """A smooth colour gradient: quick to make at any size (these tests look at geometry and formats only)."""
    width, height = size
    xs, ys = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    pixels = np.stack([xs, ys, 255 - xs], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path, **options)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("preflight-media")


@pytest.fixture(scope="module")
def good_video(media: Path) -> Path:
    return make_video(media / "good.mp4")


@pytest.fixture(scope="module")
def long_video(media: Path) -> Path:
    return make_long_video(media / "long.mp4", 601)


def run(platform: str, fmt: str, files: list[Path], work_dir: Path, **text) -> object:
    return preflight(
        platform,
        fmt,
        text.get("caption", "Morning light."),
        text.get("hashtags", ["ai", "art"]),
        text.get("title", "Morning light"),
        files,
        work_dir,
        max_duration_s=text.get("max_duration_s"),
    )


# --- text -------------------------------------------------------------------------------------------------------


def test_a_clean_image_post_goes_unchanged(media: Path, tmp_path: Path):
    photo = save_photo(media / "clean.jpg", (1080, 1350))
    report = run("instagram", "image", [photo], tmp_path)
    assert report.ok, report.summary()
    assert report.media == [photo]
    assert report.changes == [] and report.warnings == []
    assert report.text == "Morning light.\n\n#ai #art"
    assert list(tmp_path.iterdir()) == []


def test_hashtags_over_the_limit_are_dropped_from_the_end(media: Path, tmp_path: Path):
    tags = [f"tag{i}" for i in range(35)]
    report = run("instagram", "image", [save_photo(media / "h.jpg", (1080, 1080))], tmp_path, hashtags=tags)
    assert report.ok
    assert report.hashtags == tags[:30]
    assert any("dropped 5 hashtag(s) from the end" in change and "#tag34" in change for change in report.changes)


def test_duplicate_hashtags_and_those_already_in_the_caption_are_dropped(media: Path, tmp_path: Path):
    photo = save_photo(media / "d.jpg", (1080, 1080))
    report = run("facebook", "image", [photo], tmp_path, caption="Sunday #Coffee", hashtags=["#coffee", "ai", "AI"])
    assert report.hashtags == ["ai"]
    assert any("#coffee: already in the caption" in change for change in report.changes)
    assert any("#AI: listed twice" in change for change in report.changes)


def test_a_caption_over_the_limit_is_a_problem_and_is_never_cut(media: Path, tmp_path: Path):
    caption = "word " * 440 + "end"  # 2203 characters
    report = run("instagram", "image", [save_photo(media / "c.jpg", (1080, 1080))], tmp_path, caption=caption)
    assert not report.ok
    assert report.caption == caption
    (problem,) = report.problems
    assert "2203 characters, the limit is 2200" in problem and "shorten it by at least 3" in problem


def test_hashtags_are_dropped_so_caption_and_tags_fit_together(media: Path, tmp_path: Path):
    caption = "x" * 2185  # fits alone, and with "\n\n#one #two" (2196); with "#three" too it would be 2203
    photo = save_photo(media / "f.jpg", (1080, 1080))
    report = run("tiktok", "image", [photo], tmp_path, caption=caption, hashtags=["one", "two", "three", "four"])
    assert report.ok
    assert len(report.text) <= RULES["tiktok"].caption_limit
    assert report.hashtags == ["one", "two"]
    assert any("so the caption with its hashtags fits TikTok's 2200 characters" in c for c in report.changes)


def test_hashtags_inside_the_caption_count_and_cannot_be_dropped(media: Path, tmp_path: Path):
    caption = " ".join(f"#t{i}" for i in range(31))
    report = run("instagram", "image", [save_photo(media / "t.jpg", (1080, 1080))], tmp_path, caption=caption)
    assert not report.ok
    assert any("holds 31 hashtags, the limit is 30" in problem for problem in report.problems)
    assert report.hashtags == []


def test_youtube_counts_its_description_in_bytes(good_video: Path, tmp_path: Path):
    caption = "🌅" * 1300  # 1300 characters, 5200 bytes
    report = run("youtube", "reel", [good_video], tmp_path, caption=caption, hashtags=[])
    assert any("5200 bytes, the limit is 5000" in problem for problem in report.problems)


@pytest.mark.parametrize(
    ("title", "expected"),
    [("", "a title is required"), ("t" * 101, "101 characters, the limit is 100"), ("<b>Hi</b>", "'<' and '>'")],
)
def test_youtube_title_rules(good_video: Path, tmp_path: Path, title: str, expected: str):
    report = run("youtube", "reel", [good_video], tmp_path, title=title)
    assert not report.ok
    assert any(expected in problem and "YouTube title" in problem for problem in report.problems)


def test_unknown_platform_or_format_raises_with_the_fix(tmp_path: Path):
    with pytest.raises(InputError, match="use one of instagram, facebook, youtube, tiktok"):
        run("myspace", "image", [], tmp_path)
    with pytest.raises(InputError, match="YouTube does not take it"):
        run("youtube", "image", [], tmp_path)


# --- images -----------------------------------------------------------------------------------------------------


def test_png_becomes_a_jpeg_copy_for_instagram_and_the_original_is_untouched(media: Path, tmp_path: Path):
    png = save_photo(media / "generated.png", (1080, 1080))
    before = digest(png)
    report = run("instagram", "image", [png], tmp_path / "work")
    assert report.ok, report.summary()
    (fixed,) = report.media
    assert fixed.parent == tmp_path / "work" and fixed.suffix == ".jpg"
    with Image.open(fixed) as image:
        assert (image.format, image.size, image.mode) == ("JPEG", (1080, 1080), "RGB")
    assert digest(png) == before
    assert "Instagram takes JPEG, not PNG" in report.changes[0]


@pytest.mark.parametrize(
    ("size", "expected", "edges"),
    [((1000, 300), (573, 300), "left and right"), ((400, 1000), (400, 500), "top and bottom")],
)
def test_an_image_outside_instagrams_aspect_range_is_cropped_centred(
    media: Path, tmp_path: Path, size: tuple[int, int], expected: tuple[int, int], edges: str
):
    """Three bands across the long side: the crop keeps the middle one and cuts into the outer ones equally."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    long_axis = 1 if size[0] > size[1] else 0
    thirds = np.array_split(np.arange(size[1 - long_axis]), 3)
    for band, colour in zip(thirds, [(255, 0, 0), (0, 255, 0), (0, 0, 255)], strict=True):
        if long_axis:
            pixels[:, band] = colour
        else:
            pixels[band, :] = colour
    source = media / f"bands-{size[0]}x{size[1]}.png"
    Image.fromarray(pixels).save(source)
    report = run("instagram", "image", [source], tmp_path)
    assert report.ok, report.summary()
    with Image.open(report.media[0]) as image:
        assert image.size == expected
        assert 0.8 <= image.width / image.height <= 1.91
        centre = image.getpixel((image.width // 2, image.height // 2))
        first = image.getpixel((0, 0))
        last = image.getpixel((image.width - 1, image.height - 1))
    assert centre[1] > 200 and first[0] > 200 and last[2] > 200  # green kept, red and blue cut equally
    assert any("cropped" in change and f"cutting the {edges} edges" in change for change in report.changes)


@pytest.mark.parametrize(
    ("platform", "size", "fmt", "expected"),
    [("instagram", (2000, 2000), "JPEG", (1440, 1440)), ("tiktok", (2400, 1500), "WEBP", (1728, 1080))],
)
def test_an_oversize_image_is_downscaled(
    media: Path, tmp_path: Path, platform: str, size: tuple[int, int], fmt: str, expected: tuple[int, int]
):
    source = save_photo(media / f"big-{platform}.{fmt.lower()}", size, format=fmt)
    report = run(platform, "image", [source], tmp_path)
    assert report.ok, report.summary()
    with Image.open(report.media[0]) as image:
        assert image.size == expected
    assert any(f"downscaled {size[0]}x{size[1]} to {expected[0]}x{expected[1]}" in c for c in report.changes)


def test_facebook_takes_a_small_png_as_is_but_converts_one_over_4_mib(media: Path, tmp_path: Path):
    small = save_photo(media / "small.png", (600, 600))
    assert run("facebook", "image", [small], tmp_path).media == [small]
    noise = np.random.default_rng(0).integers(0, 256, (1300, 1300, 3), dtype=np.uint8)
    big = media / "noise.png"
    Image.fromarray(noise).save(big, compress_level=1)
    assert big.stat().st_size > 4 * 1024 * 1024
    report = run("facebook", "image", [big], tmp_path)
    assert report.ok, report.summary()
    assert report.media[0].stat().st_size <= 4 * 1024 * 1024
    assert "over Facebook's 4.2 MB" in report.changes[0]


def test_carousel_item_count_and_media_kind_are_checked(media: Path, good_video: Path, tmp_path: Path):
    photo = save_photo(media / "one.jpg", (1080, 1080))
    assert any("takes 2-10 image(s), got 1" in p for p in run("instagram", "carousel", [photo], tmp_path).problems)
    assert any(
        "takes 2-10 image(s), got 11" in p for p in run("instagram", "carousel", [photo] * 11, tmp_path).problems
    )
    mixed = run("instagram", "carousel", [photo, good_video], tmp_path)
    assert any("is a video, but this Instagram post takes images" in problem for problem in mixed.problems)


def test_a_missing_file_is_a_problem_that_names_it(tmp_path: Path):
    report = run("instagram", "image", [tmp_path / "gone.jpg"], tmp_path)
    assert report.problems == [f"{tmp_path / 'gone.jpg'}: the file does not exist. Fix: generate or render it again"]


# --- videos -----------------------------------------------------------------------------------------------------


def test_a_compliant_video_goes_unchanged(good_video: Path, tmp_path: Path):
    report = run("tiktok", "reel", [good_video], tmp_path)
    assert report.ok, report.summary()
    assert report.media == [good_video] and report.changes == [] and report.warnings == []


def test_a_video_without_faststart_is_remuxed_losslessly(media: Path, tmp_path: Path):
    slow = make_video(media / "slow.mp4", faststart=False)
    before = digest(slow)
    assert not probe.is_faststart(slow)
    report = run("instagram", "reel", [slow], tmp_path)
    assert report.ok, report.summary()
    (fixed,) = report.media
    assert probe.is_faststart(fixed) and fixed.parent == tmp_path
    assert probe.probe(fixed).video == probe.probe(slow).video  # streams copied, not re-encoded
    assert digest(slow) == before
    assert any("moved the MP4 index (moov) to the front" in change for change in report.changes)


def test_a_video_in_the_wrong_pixel_format_and_frame_rate_is_reencoded(media: Path, tmp_path: Path):
    wrong = make_video(media / "444.mp4", pix_fmt="yuv444p", fps=15)
    report = run("tiktok", "reel", [wrong], tmp_path)
    assert report.ok, report.summary()
    info = probe.probe(report.media[0])
    assert (info.video.codec, info.video.profile, info.video.pix_fmt) == ("h264", "High", "yuv420p")
    assert info.video.fps == 23 and info.audio.codec == "aac"
    assert probe.is_faststart(report.media[0])
    (change,) = report.changes
    assert "re-encoded its video" in change and "not yuv444p" in change and "15 fps is outside TikTok's 23-60" in change


def test_a_too_long_video_breaks_tiktok_and_youtube_shorts_rules_but_not_instagrams(long_video: Path, tmp_path: Path):
    tiktok = run("tiktok", "reel", [long_video], tmp_path)
    assert any("601.0 s long, TikTok takes at most 600 s" in problem for problem in tiktok.problems)
    shorts = run("youtube", "reel", [long_video], tmp_path)
    assert any("601.0 s long, YouTube takes at most 180 s" in problem for problem in shorts.problems)
    assert tiktok.media == shorts.media == [long_video]  # nothing trimmed
    assert run("instagram", "reel", [long_video], tmp_path).ok


def test_a_landscape_video_is_not_a_youtube_short(media: Path, tmp_path: Path):
    landscape = make_video(media / "landscape.mp4", size=(640, 360))
    shorts = run("youtube", "reel", [landscape], tmp_path)
    assert any("(1.78:1) is outside YouTube's" in p and "square or vertical" in p for p in shorts.problems)
    instagram = run("instagram", "reel", [landscape], tmp_path)
    assert instagram.ok and any("is not 9:16" in warning for warning in instagram.warnings)


def test_a_too_short_video_and_the_accounts_own_cap(media: Path, good_video: Path, tmp_path: Path):
    short = make_video(media / "short.mp4", seconds=2)
    assert any("needs at least 3 s" in p for p in run("instagram", "reel", [short], tmp_path).problems)
    capped = run("tiktok", "reel", [good_video], tmp_path, max_duration_s=3)
    assert any("takes at most 3 s (this account's own limit)" in problem for problem in capped.problems)


def test_the_summary_lists_problems_changes_and_warnings(media: Path, tmp_path: Path):
    report = run("instagram", "image", [save_photo(media / "s.png", (1080, 1080))], tmp_path, caption="x" * 2201)
    lines = report.summary().splitlines()
    assert lines[0] == "Instagram image: CANNOT be posted"
    assert lines[1].startswith("  problem: Instagram caption") and lines[2].startswith("  changed: s.png")
    assert compose_caption("", ["a", "b"]) == "#a #b"


def test_a_truncated_image_is_a_problem_not_a_crash(media: Path, tmp_path: Path):
    whole = save_photo(media / "whole.png", (200, 200))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:100])
    (problem,) = run("instagram", "image", [cut], tmp_path).problems
    assert problem.startswith("cut.png: the image cannot be decoded") and problem.endswith("Fix: generate it again")


def test_an_exif_rotated_image_is_written_upright(media: Path, tmp_path: Path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: stored 1080x1350, shown 1350x1080
    rotated = save_photo(media / "rotated.jpg", (1080, 1350), exif=exif)
    report = run("instagram", "image", [rotated], tmp_path)
    assert report.ok, report.summary()
    with Image.open(report.media[0]) as image:
        assert image.size == (1350, 1080) and image.getexif().get(0x0112, 1) == 1
    assert "EXIF orientation" in report.changes[0]
