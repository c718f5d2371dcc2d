"""Brand safety with nudenet's bundled model: harmless media passes on the real model; the blocking path is tested
with the detector's `detect` replaced, so no explicit content is needed anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from influencer_pipeline.errors import InputError
from influencer_pipeline.publishing import brand_safety
from influencer_pipeline.publishing.brand_safety import SafetyPolicy, sample_times, scan
from influencer_pipeline.video import ffmpeg
from tests import images


def make_clip(path: Path, seconds: float, source: str = "testsrc2") -> Path:
    """A small H.264 clip from a lavfi source ("testsrc2", or "color=c=gray" for one that costs nothing to encode)."""
    spec = f"{source}{':' if '=' in source else '='}s=180x320:r=10:d={seconds}"
    ffmpeg.run(
        ["-f", "lavfi", "-i", spec, "-c:v", "libx264", "-preset", "ultrafast", str(path)],
        what="making a test clip",
    )
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("brand-safety")


@pytest.fixture(scope="module")
def photo(media: Path) -> Path:
    path = media / "landscape.jpg"
    images.make_photo(3, (512, 640)).save(path)
    return path


class FakeDetections:
    """Stands in for `NudeDetector.detect`: answers each call with the next list (the last one repeats)."""

    def __init__(self, *answers: list[tuple[str, float]]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, pixels) -> list[dict]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [{"class": label, "score": score, "box": [0, 0, 10, 10]} for label, score in answer]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    def install(*answers: list[tuple[str, float]]) -> FakeDetections:
        detections = FakeDetections(*answers)
        monkeypatch.setattr(brand_safety.detector(), "detect", detections)
        return detections

    return install


def test_a_harmless_image_passes_on_the_real_model_with_a_low_score(photo: Path):
    report = scan([photo])
    assert report.passed, report.summary()
    (result,) = report.files
    assert (result.kind, result.frames_checked, result.offending) == ("image", 1, {})
    assert result.max_score < 0.5


def test_harmless_video_frames_pass_on_the_real_model(media: Path):
    report = scan([make_clip(media / "harmless.mp4", 4)])
    assert report.passed, report.summary()
    assert report.files[0].frames_checked == 2


def test_a_blocked_label_fails_the_scan_and_names_the_file_and_label(photo: Path, fake):
    fake([("FACE_FEMALE", 0.95), ("FEMALE_BREAST_EXPOSED", 0.91)])
    report = scan([photo])
    assert not report.passed
    (failure,) = report.failures
    assert failure.path == photo and failure.offending == {"FEMALE_BREAST_EXPOSED": 0.91}
    assert failure.max_score == 0.91
    assert f"{photo}: BLOCKED, FEMALE_BREAST_EXPOSED 0.91" in report.summary()
    assert report.summary().startswith("brand safety FAILED (1 of 1 file(s))")


@pytest.mark.parametrize(("score", "threshold", "passed"), [(0.49, 0.5, True), (0.5, 0.5, False), (0.45, 0.4, False)])
def test_the_threshold_is_inclusive_and_configurable(photo: Path, fake, score: float, threshold: float, passed: bool):
    fake([("BUTTOCKS_EXPOSED", score)])
    result = scan([photo], SafetyPolicy(threshold=threshold)).files[0]
    assert result.passed is passed
    assert result.max_score == score


def test_labels_that_are_not_blocked_never_fail(photo: Path, fake):
    fake([("FACE_FEMALE", 0.99), ("MALE_BREAST_EXPOSED", 0.97), ("BELLY_EXPOSED", 0.9)])
    result = scan([photo]).files[0]
    assert result.passed and result.max_score == 0.0


def test_blocked_labels_are_configurable(photo: Path, fake):
    fake([("BELLY_EXPOSED", 0.9)])
    report = scan([photo], SafetyPolicy(blocked_labels=frozenset({"BELLY_EXPOSED"})))
    assert report.failures[0].offending == {"BELLY_EXPOSED": 0.9}


def test_a_policy_with_an_unknown_label_or_bad_threshold_is_refused():
    with pytest.raises(InputError, match="unknown label"):
        SafetyPolicy(blocked_labels=frozenset({"FEMALE_BREAST_EXPOSD"}))
    with pytest.raises(InputError, match="threshold"):
        SafetyPolicy(threshold=0)


@pytest.mark.parametrize(("seconds", "frames"), [(1, 1), (7, 4), (25, 10)])
def test_videos_are_sampled_one_frame_per_2_s_at_most_10(media: Path, fake, seconds: int, frames: int):
    clip = make_clip(media / f"flat-{seconds}.mp4", seconds, source="color=c=gray")
    detections = fake([])
    result = scan([clip]).files[0]
    assert (result.kind, result.frames_checked, detections.calls) == ("video", frames, frames)
    assert result.passed


def test_sample_times_are_slice_middles():
    assert sample_times(7.0, SafetyPolicy()) == [0.875, 2.625, 4.375, 6.125]
    assert sample_times(None, SafetyPolicy()) == [0.0]
    assert len(sample_times(3600.0, SafetyPolicy(max_frames=3))) == 3


def test_a_blocked_frame_in_a_video_is_reported_with_its_time(media: Path, fake):
    clip = make_clip(media / "seven.mp4", 7, source="color=c=gray")
    fake([], [], [("ANUS_EXPOSED", 0.8)], [])
    result = scan([clip]).files[0]
    assert not result.passed
    assert result.worst_at_s == pytest.approx(4.375)
    assert "ANUS_EXPOSED 0.80 at 4.4 s (4 frame(s))" in result.describe()


def test_every_frame_of_an_animated_image_is_checked(media: Path, fake):
    frames = [images.make_photo(seed, (64, 64)) for seed in range(3)]
    gif = media / "animated.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    detections = fake([])
    assert scan([gif]).files[0].frames_checked == detections.calls == 3


def test_unreadable_or_missing_files_fail_closed(media: Path, tmp_path: Path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), "white").save(media / "whole.png")
    truncated.write_bytes((media / "whole.png").read_bytes()[:60])
    report = scan([text, truncated, tmp_path / "gone.jpg"])
    assert not report.passed and len(report.failures) == 3
    assert all(item.error and item.kind == "unreadable" for item in report.failures)
    assert "not checked, so blocked" in report.summary()


def test_the_model_is_loaded_once_per_process():
    assert brand_safety.detector() is brand_safety.detector()
