"""Fixtures for the video tests: small stills, a synthetic voice, word timings, and helpers that read a
rendered reel back (a frame as pixels, the audio as samples), all through the bundled ffmpeg.

The voice is a modulated sine made by ffmpeg's `aevalsrc` (no TTS here: the voice module has its own tests);
it speaks on [0, 1.1) s and [1.5, 2.3) s, which gives loudnorm something speech-like to measure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from influencer_pipeline.video import ffmpeg
from influencer_pipeline.video.render import ReelReport, ReelSpec, render_reel
from influencer_pipeline.video.subtitles import Word
from tests import images

SMALL = (216, 384)  # 9:16, a fifth of 1080x1920 per side: fast, and still even-sized for yuv420p
VOICE_S = 2.5


def make_tone(path: Path, expression: str, seconds: float, rate: int = 22050) -> Path:
    """Write a mono WAV from an aevalsrc expression of t."""
    ffmpeg.run(["-f", "lavfi", "-i", f"aevalsrc='{expression}':s={rate}:d={seconds}", str(path)], what="tone")
    return path


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video-media")


@pytest.fixture(scope="session")
def stills(media: Path) -> list[Path]:
    """Three photos of different aspects: portrait, landscape, square (all cropped to the output's aspect)."""
    paths = []
    for seed, size in enumerate([(384, 576), (576, 384), (400, 400)]):
        path = media / f"still-{seed}.png"
        images.make_photo(seed, size, grain=4.0).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def voice(media: Path) -> Path:
    speech = "0.3*sin(2*PI*220*t)*(0.6+0.4*sin(2*PI*3*t))*(lt(t,1.1)+between(t,1.5,2.3))"
    return make_tone(media / "voice.wav", speech, VOICE_S)


@pytest.fixture(scope="session")
def words() -> list[Word]:
    texts = ["Hello", "there,", "this", "is", "a", "test"]
    starts = [0.0, 0.4, 1.5, 1.7, 1.9, 2.1]
    return [Word(text, start, start + 0.18) for text, start in zip(texts, starts, strict=True)]


@pytest.fixture(scope="session")
def spec(stills: list[Path], voice: Path, words: list[Word]) -> ReelSpec:
    return ReelSpec(stills=stills, voice=voice, words=words, width=SMALL[0], height=SMALL[1])


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ReelReport]:
    """`render(spec, name)`: render into a fresh folder, return the report."""

    def _render(spec: ReelSpec, name: str, progress: Callable[[str], None] = lambda m: None) -> ReelReport:
        folder = tmp_path_factory.mktemp(name)
        return render_reel(spec, folder / f"{name}.mp4", folder / "work", progress=progress)

    return _render


def frame_at(video: Path, at_s: float, width: int, height: int) -> np.ndarray:
    """The frame shown at `at_s` as an RGB array (height, width, 3)."""
    raw = video.with_name(f"frame-{at_s:.3f}.rgb")
    grab = ["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", str(raw)]
    ffmpeg.run(["-ss", f"{at_s:.3f}", "-i", str(video), *grab], what="grabbing a frame")
    return np.frombuffer(raw.read_bytes(), np.uint8).reshape(height, width, 3)


def audio_samples(video: Path, rate: int = 48000) -> np.ndarray:
    """The first audio stream, down-mixed to mono float32."""
    raw = video.with_suffix(".f32")
    ffmpeg.run(["-i", str(video), "-map", "0:a:0", "-ac", "1", "-ar", str(rate), "-f", "f32le", str(raw)], what="pcm")
    return np.frombuffer(raw.read_bytes(), np.float32)


def band_level_db(samples: np.ndarray, rate: int, start_s: float, end_s: float, hz: float) -> float:
    """Level (dB) of the `hz` component in [start_s, end_s): the music tone, separate from the voice's."""
    window = samples[int(start_s * rate) : int(end_s * rate)]
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    freqs = np.fft.rfftfreq(len(window), 1 / rate)
    band = spectrum[(freqs > hz * 0.95) & (freqs < hz * 1.05)]
    return float(20 * np.log10(band.max() + 1e-12))
