"""Brand safety: block a post whose images or video frames show nudity, with a detector that ships in its wheel.

Why nudenet: its ONNX detector (`320n.onnx`, 12 MB) is inside the PyPI wheel, so the check works offline on a fresh
machine with nothing to download, and runs on CPU through onnxruntime in about 0.1 s per picture. It finds 18 body
part labels with a score each; a file fails when any *blocked* label scores at or above the threshold.

Defaults, and why:
- blocked labels: FEMALE_GENITALIA_EXPOSED, MALE_GENITALIA_EXPOSED, FEMALE_BREAST_EXPOSED, BUTTOCKS_EXPOSED and
  ANUS_EXPOSED, the nudity that Instagram's, Facebook's, TikTok's and YouTube's community guidelines all remove.
  Covered parts, faces, feet, belly, armpits and a bare male chest are swimwear and fitness content: not blocked.
- threshold 0.5: nudenet reports nothing under 0.2; at 0.5 a detection is more likely right than wrong. A brand that
  prefers a false alarm to a missed one lowers it (a person then looks at the flagged file).
- video: one frame per 2 s, at most 10, taken at the middles of equal slices of the duration, so a 6 s reel gets 3
  frames and a 3-minute one is covered end to end instead of only its first 20 s.

It fails closed: a file that cannot be decoded, or a video that yields no frame, fails the scan, because a blocking
check must not pass what it did not look at. Limitation: the detector sees the picture letterboxed into 320x320, so a
small region of a large or very tall frame can be missed; it is a safety net, not a moderator.

The model is loaded once per process, on first use (`detector()`), and shared by every scan.
"""

from __future__ import annotations

import functools
import math
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from influencer_pipeline.errors import InputError, ModelNotAvailableError
from influencer_pipeline.video import ffmpeg, probe

NUDENET_LABELS = frozenset(
    {
        "FEMALE_GENITALIA_COVERED",
        "FACE_FEMALE",
        "BUTTOCKS_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_BREAST_EXPOSED",
        "ANUS_EXPOSED",
        "FEET_EXPOSED",
        "BELLY_COVERED",
        "FEET_COVERED",
        "ARMPITS_COVERED",
        "ARMPITS_EXPOSED",
        "FACE_MALE",
        "BELLY_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "ANUS_COVERED",
        "FEMALE_BREAST_COVERED",
        "BUTTOCKS_COVERED",
    }
)
DEFAULT_BLOCKED_LABELS = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)
DEFAULT_THRESHOLD = 0.5
_INSTALL = "pip install --force-reinstall nudenet==3.4.2 (the wheel ships the model)"
_LOAD_LOCK = threading.Lock()


class Detector(Protocol):
    """What a scan needs from nudenet's `NudeDetector`: `detect` on a BGR uint8 array (as `cv2.imread` returns)."""

    def detect(self, image: Any) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class SafetyPolicy:
    """Which labels block a post and from what score, and how densely videos are sampled (module docstring)."""

    blocked_labels: frozenset[str] = DEFAULT_BLOCKED_LABELS
    threshold: float = DEFAULT_THRESHOLD
    seconds_per_frame: float = 2.0
    max_frames: int = 10

    def __post_init__(self) -> None:
        unknown = sorted(set(self.blocked_labels) - NUDENET_LABELS)
        if unknown:  # a misspelt label would silently never block anything
            raise InputError(
                "blocked_labels", f"unknown label(s) {unknown}", f"use nudenet's: {sorted(NUDENET_LABELS)}"
            )
        if not self.blocked_labels:
            raise InputError("blocked_labels", "is empty, so nothing would ever be blocked", "list at least one label")
        if not 0 < self.threshold <= 1:
            raise InputError("threshold", f"{self.threshold} is not in (0, 1]", "use a score such as 0.5")
        if self.seconds_per_frame <= 0 or self.max_frames < 1:
            raise InputError("video sampling", "needs seconds_per_frame > 0 and max_frames >= 1", "use 2.0 and 10")


@dataclass(frozen=True)
class FileSafety:
    """One file's verdict. `max_score` is the highest score of any blocked label (0.0 when none was seen)."""

    path: Path
    kind: Literal["image", "video", "unreadable"]
    frames_checked: int
    max_score: float
    offending: dict[str, float] = field(default_factory=dict)  # blocked labels at/over the threshold -> best score
    worst_at_s: float | None = None  # video: when the highest blocked score was seen
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.offending and not self.error

    def describe(self) -> str:
        if self.error:
            return f"{self.path}: not checked, so blocked: {self.error}"
        frames = f"{self.frames_checked} frame(s)" if self.kind == "video" else "image"
        if self.passed:
            return f"{self.path}: passed ({frames}, highest blocked-label score {self.max_score:.2f})"
        labels = ", ".join(f"{label} {score:.2f}" for label, score in sorted(self.offending.items()))
        when = f" at {self.worst_at_s:.1f} s" if self.worst_at_s is not None else ""
        return f"{self.path}: BLOCKED, {labels}{when} ({frames}). Fix: replace or regenerate this media"


@dataclass(frozen=True)
class SafetyReport:
    files: tuple[FileSafety, ...]
    policy: SafetyPolicy

    @property
    def passed(self) -> bool:
        return all(item.passed for item in self.files)

    @property
    def failures(self) -> list[FileSafety]:
        return [item for item in self.files if not item.passed]

    def summary(self) -> str:
        """Human lines for a run log or an asset check's description."""
        verdict = "passed" if self.passed else f"FAILED ({len(self.failures)} of {len(self.files)} file(s))"
        labels = ", ".join(sorted(self.policy.blocked_labels))
        head = f"brand safety {verdict}: blocking {labels} at score >= {self.policy.threshold:g}"
        return "\n".join([head, *(f"  {item.describe()}" for item in self.files)])


def detector() -> Detector:
    """nudenet's detector, loaded on first use and then shared (the lock keeps two threads from loading it twice)."""
    with _LOAD_LOCK:
        return _load_detector()


@functools.cache
def _load_detector() -> Detector:
    try:
        import nudenet
        from nudenet import NudeDetector
    except ImportError as error:
        raise ModelNotAvailableError(f"nudenet is not installed. Fix: {_INSTALL}") from error
    model = Path(nudenet.__file__).parent / "320n.onnx"
    if not model.is_file():
        raise ModelNotAvailableError(f"nudenet's model {model} is missing. Fix: {_INSTALL}")
    return NudeDetector(model_path=str(model))


def scan(paths: Iterable[Path], policy: SafetyPolicy | None = None) -> SafetyReport:
    """Check every image, and sampled frames of every video, against `policy` (defaults in the module docstring)."""
    policy = policy or SafetyPolicy()
    model = detector()
    return SafetyReport(tuple(_scan_file(Path(path), policy, model) for path in paths), policy)


def _scan_file(path: Path, policy: SafetyPolicy, model: Detector) -> FileSafety:
    if not path.is_file():
        return FileSafety(path, "unreadable", 0, 0.0, error="the file does not exist")
    try:
        with Image.open(path) as image:
            frames = list(_image_frames(image, policy.max_frames))
        kind: Literal["image", "video"] = "image"
    except UnidentifiedImageError:
        kind = "video"
        try:
            frames = _video_frames(path, policy)
        except (ffmpeg.FFmpegError, InputError) as error:
            return FileSafety(path, "unreadable", 0, 0.0, error=f"neither an image nor a readable video ({error})")
    except OSError as error:
        return FileSafety(path, "unreadable", 0, 0.0, error=f"the image cannot be decoded ({error})")
    if not frames:
        return FileSafety(path, kind, 0, 0.0, error="no frame could be extracted")
    return _verdict(path, kind, frames, policy, model)


def _verdict(
    path: Path,
    kind: Literal["image", "video"],
    frames: list[tuple[float | None, np.ndarray]],
    policy: SafetyPolicy,
    model: Detector,
) -> FileSafety:
    best: dict[str, float] = {}
    max_score, worst_at = 0.0, None
    for at_s, pixels in frames:
        for found in model.detect(pixels):
            label, score = str(found["class"]), float(found["score"])
            if label not in policy.blocked_labels:
                continue
            best[label] = max(best.get(label, 0.0), score)
            if score > max_score:
                max_score, worst_at = score, at_s
    offending = {label: score for label, score in best.items() if score >= policy.threshold}
    return FileSafety(path, kind, len(frames), max_score, offending, worst_at if kind == "video" else None)


def _image_frames(image: Image.Image, max_frames: int) -> Iterator[tuple[float | None, np.ndarray]]:
    """An image's pixels (upright) as the detector takes them; an animated one gives up to `max_frames` frames."""
    count = getattr(image, "n_frames", 1)
    for index in sorted(
        {math.floor((i + 0.5) * count / min(count, max_frames)) for i in range(min(count, max_frames))}
    ):
        image.seek(index)
        yield None, _bgr(ImageOps.exif_transpose(image))


def _bgr(image: Image.Image) -> np.ndarray:
    """RGB pixels reversed to BGR, contiguous: what `cv2.imread` returns and nudenet's preprocessing expects."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def sample_times(duration_s: float | None, policy: SafetyPolicy) -> list[float]:
    """Where to look in a video: one frame per `seconds_per_frame`, at most `max_frames`, at slice middles."""
    if not duration_s or duration_s <= 0:
        return [0.0]
    count = min(policy.max_frames, max(1, math.ceil(duration_s / policy.seconds_per_frame)))
    return [duration_s * (i + 0.5) / count for i in range(count)]


def _video_frames(path: Path, policy: SafetyPolicy) -> list[tuple[float | None, np.ndarray]]:
    """The sampled frames, extracted in one ffmpeg run (one seeking input and one BMP output per frame)."""
    path = path.absolute()
    times = sample_times(probe.probe(path).duration_s, policy)
    with tempfile.TemporaryDirectory(prefix="brand-safety-") as folder:
        outputs = [Path(folder) / f"frame-{index:02d}.bmp" for index in range(len(times))]
        args: list[str] = []
        for at_s in times:
            args += ["-ss", f"{at_s:.3f}", "-i", str(path)]
        for index, output in enumerate(outputs):
            args += ["-map", f"{index}:v:0", "-frames:v", "1", "-update", "1", str(output)]
        ffmpeg.run(args, what=f"sampling {len(times)} frame(s) of {path.name} for brand safety")
        return [(at_s, _read_frame(output)) for at_s, output in zip(times, outputs, strict=True) if output.is_file()]


def _read_frame(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return _bgr(image)
