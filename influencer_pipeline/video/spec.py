"""What a reel is: its inputs (`ReelSpec`), its frame timeline, its output format and what was measured on it.

Shared by the three stages of `render` (the audio mix, the ffmpeg graph, the encode) and by pre-flight, which
re-encodes a platform's video with the same settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from influencer_pipeline.errors import InputError
from influencer_pipeline.video.subtitles import Word

MAX_STILLS = 10
TAIL_S = 0.5  # the picture holds this long after the voice ends
DEFAULT_SECONDS_PER_STILL = 3.0  # only when there is neither a voice nor seconds_per_still
SAMPLE_RATE = 48000
X264 = {
    "vcodec": "libx264",
    "preset": "veryfast",
    "crf": 20,
    "maxrate": "10M",
    "bufsize": "20M",
    "profile:v": "high",
    "pix_fmt": "yuv420p",
    "colorspace": "bt709",
    "color_primaries": "bt709",
    "color_trc": "bt709",
    "color_range": "tv",
}
AAC = {"acodec": "aac", "b:a": "192k", "ar": SAMPLE_RATE, "ac": 2}


@dataclass(frozen=True)
class ReelSpec:
    """What to render. Times are seconds; `words` are in the voice's timeline, which is the reel's timeline."""

    stills: list[Path]  # 1-10 images of any size or aspect
    voice: Path | None  # any audio ffmpeg reads; None -> a silent track as long as the stills
    words: list[Word]  # caption timing; empty -> no captions
    width: int
    height: int
    fps: int = 30
    seconds_per_still: float | None = None  # None: spread the stills over the voice (+ TAIL_S)
    crossfade_s: float = 0.5
    music: Path | None = None  # ducked under the voice, looped or trimmed to the reel
    target_lufs: float = -14.0
    true_peak_db: float = -1.5
    clips: Sequence[Path] = ()  # video clips (e.g. ComfyUI img2vid) used instead of the first stills' motion


@dataclass
class ReelReport:
    """The reel as measured on the output file, not as requested. `render_s` runs until the MP4 is in place;
    the verification after it (probe, an ebur128 pass) is not in it."""

    output: Path
    duration_s: float
    width: int
    height: int
    integrated_lufs: float
    true_peak_db: float
    loudnorm_mode: str  # "linear" | "dynamic" | "none" (silent reel: nothing to normalise)
    video_codec: str
    profile: str
    pix_fmt: str
    audio_codec: str
    sample_rate: int
    channels: int
    faststart: bool
    size_bytes: int
    render_s: float
    realtime_factor: float  # render seconds per second of video


@dataclass(frozen=True)
class Timeline:
    """Whole frames per segment and per crossfade, so the reel's length is exact to the frame."""

    fps: int
    segment_frames: tuple[int, ...]
    fade_frames: int

    @property
    def total_frames(self) -> int:
        return sum(self.segment_frames) - self.fade_frames * (len(self.segment_frames) - 1)

    @property
    def duration_s(self) -> float:
        return self.total_frames / self.fps

    def fade_offsets_s(self) -> list[float]:
        """xfade offsets on the first input's timeline: offset_k = (D1 + ... + Dk) - k * T."""
        offsets, frame = [], 0
        for frames in self.segment_frames[:-1]:
            frame += frames - self.fade_frames
            offsets.append(frame / self.fps)
        return offsets


def plan_timeline(
    count: int, fps: int, voice_s: float | None, seconds_per_still: float | None, crossfade_s: float
) -> Timeline:
    """Frames per still: `seconds_per_still` each, or the voice (+ TAIL_S) shared out evenly; crossfades overlap."""
    fade = round(crossfade_s * fps) if count > 1 else 0
    if seconds_per_still is None and voice_s is None:
        seconds_per_still = DEFAULT_SECONDS_PER_STILL
    if seconds_per_still is not None:
        timeline = Timeline(fps, (round(seconds_per_still * fps),) * count, fade)
        if voice_s is not None and voice_s > timeline.duration_s + 1e-6:
            raise InputError(
                "seconds_per_still",
                f"the voice is {voice_s:.2f} s but {count} stills of {seconds_per_still} s with {crossfade_s} s "
                f"crossfades last {timeline.duration_s:.2f} s, so the voice would be cut",
                "leave seconds_per_still unset to spread the stills over the voice, or add stills",
            )
    else:
        total = math.ceil((voice_s + TAIL_S) * fps - 1e-6)
        base, extra = divmod(total + fade * (count - 1), count)
        timeline = Timeline(fps, tuple(base + (index < extra) for index in range(count)), fade)
    for index, frames in enumerate(timeline.segment_frames):
        fades = (index > 0) + (index < count - 1)  # the first and last stills fade once, the others twice
        if frames <= fades * fade:
            raise InputError(
                "crossfade_s",
                f"still {index + 1} is on screen {frames / fps:.2f} s, not longer than its {fades} "
                f"crossfade(s) of {crossfade_s} s",
                "use fewer stills, a shorter crossfade_s or a longer seconds_per_still",
            )
    return timeline
