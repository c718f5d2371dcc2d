"""Reels from stills: Ken Burns motion, crossfades, burned-in word captions, voice and ducked music, loudness.

The work is a few cheap audio-only ffmpeg runs and ONE full-resolution encode per output:

1. mix (audio only): the voice (or silence) and the optional music bed, looped or trimmed to the reel, ducked under
   the voice with `sidechaincompress`, written as 48 kHz stereo float WAV (float, so a loud sum cannot clip
   before normalisation).
2. measure (audio only): `loudnorm` pass 1 on that mix. ffmpeg silently falls back to dynamic mode unless
   `measured_TP + (I - measured_I) <= TP` and `measured_LRA <= LRA`; speech usually fails the first (sharp
   peaks), so then the mix is made again with the gain applied through a lookahead peak limiter and re-measured,
   and pass 2 is a clean linear gain rather than loudnorm's riding AGC. `loudnorm_mode` reports what ran.
3. encode: every still becomes its own `zoompan` branch (cropped to the output aspect at source resolution, then
   upscaled `UPSCALE`x so zoompan's whole-input-pixel positions move in quarter output pixels instead of
   jittering), `xfade` joins the branches, `ass` burns the captions at the output's pixel size, and `loudnorm`
   pass 2 applies the measured values to the mix. H.264 High yuv420p (BT.709, tagged), AAC-LC 48 kHz stereo,
   `+faststart`.

Afterwards the output is probed and its loudness re-measured with an independent meter (`ebur128`) for the report.

Graphs are built with ffmpeg-python: it names the stream labels, wires the N branches and N-1 crossfades without
hand-numbered `[v0]`..`[v9]` labels, and escapes option values at both filtergraph levels, so caption and font
paths with `:` `,` `'` or spaces need no hand escaping. It only compiles the argv; running it (binary choice,
progress, errors) is `ffmpeg.run`, because ffmpeg-python's own runner would call whatever `ffmpeg` is on PATH.

The stages live in their own modules: `spec` (inputs, timeline, output format, report), `audio` (steps 1-2),
`graph` (the filter graph of step 3); this module checks the inputs, runs the stages and measures the result.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

import influencer_pipeline.video.ffmpeg as ffmpeg
import influencer_pipeline.video.probe as probe
import influencer_pipeline.video.subtitles as subtitles
from influencer_pipeline.errors import InputError
from influencer_pipeline.images import encode_jpeg
from influencer_pipeline.video.audio import measure_loudnorm, normalization_type, prepare_audio
from influencer_pipeline.video.graph import encode_args, plan_segments, readable_still
from influencer_pipeline.video.spec import (
    AAC,
    DEFAULT_SECONDS_PER_STILL,
    MAX_STILLS,
    SAMPLE_RATE,
    TAIL_S,
    X264,
    ReelReport,
    ReelSpec,
    Timeline,
    plan_timeline,
)

__all__ = [
    "AAC",
    "DEFAULT_SECONDS_PER_STILL",
    "SAMPLE_RATE",
    "TAIL_S",
    "X264",
    "ReelReport",
    "ReelSpec",
    "Timeline",
    "check_reel",
    "expected_duration",
    "measure_loudnorm",
    "plan_timeline",
    "readable_still",
    "render_reel",
    "thumbnail",
]


def render_reel(
    spec: ReelSpec, output: Path, work_dir: Path, progress: Callable[[str], None] = lambda m: None
) -> ReelReport:
    """Render `spec` to `output` (MP4) and return what was measured on it.

    Intermediates (the audio mix, the captions, re-encoded stills) go to `work_dir/<output stem>/`, so several
    outputs, e.g. the 9:16 and 1:1 cuts of one post, can share a work folder, even rendering at the same time."""
    started = time.perf_counter()
    output = Path(output).absolute()
    work_dir = Path(work_dir).absolute() / output.stem
    _check_spec(spec)
    spec = _absolute_paths(spec)
    _check_writable(output.parent, "output folder")
    _check_writable(work_dir, "work folder")
    voice_s = _voice_duration(spec.voice)
    timeline = plan_timeline(len(spec.stills), spec.fps, voice_s, spec.seconds_per_still, spec.crossfade_s)
    segments = plan_segments(spec, timeline, work_dir)
    captions = _captions(spec, work_dir)
    progress(f"mixing {timeline.duration_s:.2f} s of audio")
    mix, loudnorm = prepare_audio(spec, timeline.duration_s, work_dir)
    partial = output.with_name(f".{output.stem}.part.mp4")
    try:
        stderr = ffmpeg.run(
            encode_args(spec, timeline, segments, captions, mix, loudnorm, partial),
            what=f"encoding the {spec.width}x{spec.height} reel",
            progress=progress,
            duration_s=timeline.duration_s,
        )
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    mode = "none" if loudnorm.silent else normalization_type(stderr)
    report = _report(output, mode, time.perf_counter() - started)
    progress(f"rendered {output.name}: {report.duration_s:.2f} s, {report.integrated_lufs:.1f} LUFS ({mode})")
    return report


def expected_duration(spec: ReelSpec) -> float:
    """The reel's length that `render_reel` aims for (probes the voice; cheap)."""
    voice_s = _voice_duration(spec.voice)
    return plan_timeline(len(spec.stills), spec.fps, voice_s, spec.seconds_per_still, spec.crossfade_s).duration_s


def check_reel(report: ReelReport, spec: ReelSpec) -> list[str]:
    """Everything wrong with a rendered reel, as sentences (empty: publishable)."""
    problems = []
    expected = expected_duration(spec)
    tolerance = 2 / spec.fps + 0.011  # two frames, plus the container's 10 ms duration resolution
    if abs(report.duration_s - expected) > tolerance:
        problems.append(f"duration is {report.duration_s:.3f} s, expected {expected:.3f} s (± {tolerance:.3f})")
    if (report.width, report.height) != (spec.width, spec.height):
        problems.append(f"frame is {report.width}x{report.height}, expected {spec.width}x{spec.height}")
    if (report.video_codec, report.profile, report.pix_fmt) != ("h264", "High", "yuv420p"):
        problems.append(
            f"video is {report.video_codec or 'missing'} {report.profile} {report.pix_fmt}, expected h264 High yuv420p"
        )
    if (report.audio_codec, report.sample_rate, report.channels) != ("aac", SAMPLE_RATE, 2):
        problems.append(
            f"audio is {report.audio_codec or 'missing'} {report.sample_rate} Hz {report.channels} ch, "
            f"expected aac {SAMPLE_RATE} Hz 2 ch"
        )
    if not report.faststart:
        problems.append("the MP4 index (moov) is after the media data: not faststart")
    if report.loudnorm_mode != "none":
        if abs(report.integrated_lufs - spec.target_lufs) > 1.0:
            problems.append(f"loudness is {report.integrated_lufs:.1f} LUFS, expected {spec.target_lufs} ± 1 LU")
        if report.true_peak_db > spec.true_peak_db + 0.1:
            problems.append(f"true peak is {report.true_peak_db:.1f} dBTP, above {spec.true_peak_db} dBTP")
    return problems


def thumbnail(video: Path, at_s: float, max_side: int = 320) -> bytes:
    """JPEG bytes of the frame at `at_s`, longest side `max_side` (for Dagster metadata previews)."""
    video = Path(video).absolute()
    if not video.is_file():
        raise InputError(str(video), "the video does not exist", "render it first")
    with tempfile.TemporaryDirectory() as folder:
        frame = Path(folder) / "frame.png"
        scale = f"scale='if(gte(iw,ih),{max_side},-2)':'if(gte(iw,ih),-2,{max_side})'"
        ffmpeg.run(
            ["-ss", f"{at_s:.3f}", "-i", str(video), "-frames:v", "1", "-vf", scale, str(frame)],
            what=f"taking a thumbnail of {video} at {at_s:.2f} s",
        )
        if not frame.is_file():
            raise InputError(str(video), f"has no frame at {at_s:.2f} s", "pick a time within the video")
        with Image.open(frame) as image:
            buffer = encode_jpeg(image.convert("RGB"), 85)
    return buffer


# --- inputs -------------------------------------------------------------------------------------------------


def _check_spec(spec: ReelSpec) -> None:
    if not 1 <= len(spec.stills) <= MAX_STILLS:
        raise InputError("stills", f"{len(spec.stills)} stills given", f"give 1 to {MAX_STILLS} images")
    if len(spec.clips) > len(spec.stills):
        raise InputError("clips", f"{len(spec.clips)} clips for {len(spec.stills)} stills", "give one still per clip")
    if spec.width <= 0 or spec.height <= 0 or spec.width % 2 or spec.height % 2:
        raise InputError("width/height", f"{spec.width}x{spec.height} is not a positive even size", "use 1080x1920")
    if not 1 <= spec.fps <= 120:
        raise InputError("fps", f"{spec.fps} is out of range", "use 30")
    if spec.crossfade_s < 0 or (spec.seconds_per_still is not None and spec.seconds_per_still <= 0):
        raise InputError("crossfade_s/seconds_per_still", "must be positive", "use e.g. 0.5 and 3.0")
    for role, paths in (("still", spec.stills), ("clip", spec.clips), ("voice", [spec.voice]), ("music", [spec.music])):
        for path in paths:
            if path is not None and not Path(path).is_file():
                raise InputError(str(path), f"the {role} file does not exist", "check the path")


def _absolute_paths(spec: ReelSpec) -> ReelSpec:
    """ffmpeg reads a relative input such as "we:ird/still.png" as protocol "we"; absolute paths never are."""

    def absolute(path: Path | None) -> Path | None:
        return None if path is None else Path(path).absolute()

    return dataclasses.replace(
        spec,
        stills=[absolute(p) for p in spec.stills],
        clips=[absolute(p) for p in spec.clips],
        voice=absolute(spec.voice),
        music=absolute(spec.music),
    )


def _check_writable(folder: Path, role: str) -> None:
    """Fail before minutes of rendering, with the folder named, rather than when ffmpeg opens its output."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise InputError(
            str(folder),
            f"the {role} cannot be written ({error.strerror or error})",
            "choose a writable folder (check its permissions, free space and that no file has its name)",
        ) from error


def _voice_duration(voice: Path | None) -> float | None:
    if voice is None:
        return None
    info = probe.probe(Path(voice))
    if info.audio is None or not info.duration_s:
        raise InputError(str(voice), "has no audio stream", "give a WAV/MP3/M4A with the voice-over")
    return info.duration_s


def _captions(spec: ReelSpec, work_dir: Path) -> tuple[Path, Path] | None:
    """(ASS file, fonts folder) or None when there are no words."""
    if not spec.words:
        return None
    path = work_dir / "captions.ass"
    fonts = subtitles.write_ass(spec.words, spec.width, spec.height, path)
    return path, fonts


# --- the report ----------------------------------------------------------------------------------------------


def _report(output: Path, mode: str, render_s: float) -> ReelReport:
    info = probe.probe(output)
    level = probe.loudness(output)
    video, audio = info.video, info.audio
    duration = info.duration_s or 0.0
    return ReelReport(
        output=output,
        duration_s=duration,
        width=video.width if video else 0,
        height=video.height if video else 0,
        integrated_lufs=level.integrated_lufs,
        true_peak_db=level.true_peak_db,
        loudnorm_mode=mode,
        video_codec=video.codec if video else "",
        profile=video.profile if video else "",
        pix_fmt=video.pix_fmt if video else "",
        audio_codec=audio.codec if audio else "",
        sample_rate=audio.sample_rate if audio else 0,
        channels=audio.channels if audio else 0,
        faststart=probe.is_faststart(output),
        size_bytes=output.stat().st_size,
        render_s=render_s,
        realtime_factor=render_s / duration if duration else math.inf,
    )
