"""Probing media with ffmpeg alone: imageio-ffmpeg ships no ffprobe, and a user's machine may have none.

- Streams, codecs, sizes and the duration come from the header ffmpeg prints for `ffmpeg -i FILE` (it then exits 1
  with "At least one output file must be specified", which is expected and not an error here). The container's
  duration has 10 ms resolution, finer than one frame at 30 fps.
- Loudness is the `ebur128=peak=true` summary of an `-f null` pass: integrated loudness (LUFS), loudness range and
  true peak (dBTP, printed as "dBFS"). It is an independent meter from the `loudnorm` filter that normalised the
  audio, which is the point of re-measuring.
- Faststart is read from the MP4's top-level box order in Python: `moov` before `mdat` means a player can start
  before the whole file has arrived, which the platforms ask for.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import influencer_pipeline.video.ffmpeg as ffmpeg
from influencer_pipeline.errors import InputError

_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6, "7.1": 8}
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_STREAM = re.compile(r"^\s*Stream #\d+:\d+\S*: (Video|Audio): (.*)$", re.MULTILINE)
_CODEC = re.compile(r"^(\w+)(?: \(([^()/]+)\))?")
SILENCE_LUFS = -69.0  # ebur128 and loudnorm report -70 (their gate) for silence
_SUMMARY_VALUE = r"{label}:\s+(-?(?:\d+(?:\.\d+)?|inf))"


@dataclass(frozen=True)
class VideoStream:
    codec: str
    profile: str  # "" when the codec has none (png, rawvideo)
    pix_fmt: str
    width: int
    height: int
    fps: float


@dataclass(frozen=True)
class AudioStream:
    codec: str
    profile: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class MediaInfo:
    """The first video and the first audio stream of a file (either may be None) and its duration."""

    path: Path
    duration_s: float | None
    video: VideoStream | None
    audio: AudioStream | None


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float  # -70.0 (the meter's floor) for digital silence
    lra_lu: float
    true_peak_db: float


def probe(path: Path) -> MediaInfo:
    """Streams and duration of `path`; InputError if it is missing, FFmpegError if ffmpeg cannot read it."""
    path = _absolute(path)
    try:
        ffmpeg.run(["-i", str(path)], what=f"reading {path}")
    except ffmpeg.FFmpegError as error:
        if "Input #0" not in error.stderr:
            raise
        return parse_header(path, error.stderr)
    raise AssertionError("ffmpeg -i without an output always exits non-zero")  # pragma: no cover


def parse_header(path: Path, text: str) -> MediaInfo:
    """Parse the header that `ffmpeg -i` prints on stderr (kept separate so it is testable on fixed text)."""
    match = _DURATION.search(text)
    duration = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3]) if match else None
    video = audio = None
    for kind, description in _STREAM.findall(text):
        if kind == "Video" and video is None and "(attached pic)" not in description:
            video = _video_stream(description)
        elif kind == "Audio" and audio is None:
            audio = _audio_stream(description)
    return MediaInfo(path=path, duration_s=duration, video=video, audio=audio)


def _video_stream(description: str) -> VideoStream:
    fields = _top_level_fields(description)
    codec, profile = _codec(fields[0])
    size = next((m for f in fields if (m := re.match(r"(\d+)x(\d+)\b", f))), None)
    fps = next((float(m[1]) for f in fields if (m := re.fullmatch(r"([\d.]+) fps", f))), 0.0)
    return VideoStream(
        codec=codec,
        profile=profile,
        pix_fmt=re.match(r"\w*", fields[1])[0] if len(fields) > 1 else "",
        width=int(size[1]) if size else 0,
        height=int(size[2]) if size else 0,
        fps=fps,
    )


def _audio_stream(description: str) -> AudioStream:
    fields = _top_level_fields(description)
    codec, profile = _codec(fields[0])
    rate = next((int(m[1]) for f in fields if (m := re.fullmatch(r"(\d+) Hz", f))), 0)
    channels = 0
    for field in fields:
        if field in _CHANNELS:
            channels = _CHANNELS[field]
        elif m := re.fullmatch(r"(\d+) channels(?: \(.*\))?", field):
            channels = int(m[1])
    return AudioStream(codec=codec, profile=profile, sample_rate=rate, channels=channels)


def _codec(field: str) -> tuple[str, str]:
    """'h264 (High) (avc1 / 0x31637661)' -> ('h264', 'High'); the fourcc group always contains a slash."""
    match = _CODEC.match(field)
    return (match[1], match[2] or "") if match else (field, "")


def _top_level_fields(text: str) -> list[str]:
    """Split on commas outside brackets: 'yuv420p(tv, bt709, progressive)' is one field."""
    fields, depth, current = [], 0, []
    for char in text:
        depth += (char in "([") - (char in ")]")
        if char == "," and depth == 0:
            fields.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    fields.append("".join(current).strip())
    return fields


def loudness(path: Path, limit_s: float | None = None) -> Loudness:
    """EBU R128 integrated loudness, loudness range and true peak of the first audio stream (of its first
    `limit_s` seconds when given: enough to set a music bed's level without decoding a whole song)."""
    path = _absolute(path)
    args = ["-nostats", "-i", str(path)] if limit_s is None else ["-nostats", "-t", f"{limit_s:.3f}", "-i", str(path)]
    stderr = ffmpeg.run(
        [*args, "-map", "0:a:0", "-af", "ebur128=peak=true:framelog=quiet", "-f", "null", "-"],
        what=f"measuring the loudness of {path}",
    )
    return parse_ebur128_summary(stderr)


def parse_ebur128_summary(text: str) -> Loudness:
    """The values of the last "Summary:" block that the ebur128 filter prints."""
    summary = text[text.rfind("Summary:") :]

    def value(label: str) -> float:
        match = re.search(_SUMMARY_VALUE.format(label=label), summary)
        if not match:
            raise ValueError(f"no {label!r} in ebur128's summary:\n{summary[-800:]}")
        return float(match[1])

    return Loudness(integrated_lufs=value("I"), lra_lu=value("LRA"), true_peak_db=value("Peak"))


def mp4_boxes(path: Path) -> list[str]:
    """Types of the top-level MP4 boxes in file order (8-byte size+type headers, 64-bit sizes when size == 1)."""
    boxes = []
    with open(path, "rb") as stream:
        total = stream.seek(0, 2)
        position = 0
        while position + 8 <= total:
            stream.seek(position)
            size, kind = struct.unpack(">I4s", stream.read(8))
            if size == 1:
                size = struct.unpack(">Q", stream.read(8))[0]
            elif size == 0:  # the box runs to the end of the file
                size = total - position
            if size < 8:
                raise ValueError(f"{path}: corrupt MP4 box {kind!r} of size {size} at byte {position}")
            boxes.append(kind.decode("latin-1"))
            position += size
    return boxes


def is_faststart(path: Path) -> bool:
    """True when the `moov` index precedes the media data, so playback can start while downloading."""
    boxes = mp4_boxes(path)
    return "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat")


def _absolute(path: Path) -> Path:
    """An existing file's absolute path: ffmpeg reads a relative "we:ird.wav" as protocol "we"."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "the file does not exist", "check the path (and that the upstream step wrote it)")
    return path.absolute()


def is_silent(level: Loudness) -> bool:
    """Digital silence (or nearly): loudness normalisation has nothing to work on."""
    return math.isinf(level.integrated_lufs) or level.integrated_lufs <= SILENCE_LUFS
