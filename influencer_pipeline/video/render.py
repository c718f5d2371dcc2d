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
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ffmpeg as ffmpeg_python
from PIL import Image, ImageOps, UnidentifiedImageError

import influencer_pipeline.video.ffmpeg as ffmpeg
import influencer_pipeline.video.probe as probe
import influencer_pipeline.video.subtitles as subtitles
from influencer_pipeline.errors import InputError
from influencer_pipeline.video.subtitles import Word

MAX_STILLS = 10
TAIL_S = 0.5  # the picture holds this long after the voice ends
DEFAULT_SECONDS_PER_STILL = 3.0  # only when there is neither a voice nor seconds_per_still
# zoompan crops at whole input pixels, so motion wobbles by up to 1/UPSCALE output px. Measured (dot tracked over
# 150 frames at 1080x1920): max deviation from smooth 1.06 / 0.54 / 0.36 / 0.27 px at 1x / 2x / 3x / 4x; a 15 s
# reel on 2 cores renders in 11.0 / 12.9 / 14.7 s at 2x / 3x / 4x. 4x is the smooth end of that trade.
UPSCALE = 4
KEN_BURNS_ZOOM = 0.15  # zoom travel per still: 1.00 -> 1.15
LRA = 11.0
SAMPLE_RATE = 48000
VOICE_LEVEL_LUFS = -20.0  # voice and music are levelled relative to each other before mixing...
MUSIC_BED_LU = 10.0  # ...the music bed sits this far under the voice, then ducks further while the voice speaks
MUSIC_FADE_S = 1.5
# AAC smears sharp transients: its decoded true peak can sit up to ~0.6 dB above the PCM it was given, so
# loudnorm and the limiter aim this far under the spec's true-peak ceiling (which the final check re-measures).
AAC_HEADROOM_DB = 0.5
LIMITER_MARGIN_DB = 0.5  # the limiter is sample-peak; true peaks can exceed it by a fraction of a dB
LIMITER_ROUNDS = 3
# Synthetic speech peaks high (espeak-ng: -1.3 dBTP at -20.7 LUFS), so -14 LUFS at -1.5 dBTP needs about 7 dB of
# peak reduction whoever does it (loudnorm's dynamic mode limits too); beyond 10 dB, dynamic mode is left to it.
MAX_LIMITING_DB = 10.0
AUDIO_FILE = "mix.wav"
MOTIONS = ("zoom_in", "pan_right", "zoom_out", "pan_left")
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
_LOUDNORM_JSON = re.compile(r"\{[^{}]*\"normalization_type\"[^{}]*\}")


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


@dataclass(frozen=True)
class _Segment:
    """One still (cropped to the output aspect) or one clip, and its motion."""

    path: Path
    frames: int
    is_clip: bool
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)  # w, h, x, y in source pixels
    motion: str = "zoom_in"


@dataclass(frozen=True)
class _Loudnorm:
    """loudnorm pass-1 measurements, as the strings of ffmpeg's JSON (pass 2 takes them verbatim)."""

    measured: dict[str, str]

    @property
    def silent(self) -> bool:
        value = self.measured.get("input_i", "-inf")
        return not _is_number(value) or float(value) <= probe.SILENCE_LUFS

    @property
    def integrated(self) -> float:
        return float(self.measured["input_i"])

    def linear_excess_db(self, spec: ReelSpec) -> float:
        """How far the peaks are from allowing linear mode: ffmpeg uses it only if
        measured_TP + (I - measured_I) <= TP (and measured_LRA <= LRA); positive means dynamic mode."""
        return float(self.measured["input_tp"]) + spec.target_lufs - self.integrated - _loudnorm_tp(spec)


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
    segments = _segments(spec, timeline, work_dir)
    captions = _captions(spec, work_dir)
    progress(f"mixing {timeline.duration_s:.2f} s of audio")
    mix, loudnorm = prepare_audio(spec, timeline.duration_s, work_dir)
    partial = output.with_name(f".{output.stem}.part.mp4")
    try:
        stderr = ffmpeg.run(
            _encode_args(spec, timeline, segments, captions, mix, loudnorm, partial),
            what=f"encoding the {spec.width}x{spec.height} reel",
            progress=progress,
            duration_s=timeline.duration_s,
        )
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    mode = "none" if loudnorm.silent else _normalization_type(stderr)
    report = _report(output, mode, time.perf_counter() - started)
    progress(f"rendered {output.name}: {report.duration_s:.2f} s, {report.integrated_lufs:.1f} LUFS ({mode})")
    return report


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
            buffer = _jpeg(image.convert("RGB"))
    return buffer


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


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


def _segments(spec: ReelSpec, timeline: Timeline, work_dir: Path) -> list[_Segment]:
    """Clips replace the first stills' motion, in order; each remaining still gets the next Ken Burns move."""
    segments = []
    for index, frames in enumerate(timeline.segment_frames):
        if index < len(spec.clips):
            clip = Path(spec.clips[index])
            if probe.probe(clip).video is None:
                raise InputError(str(clip), "has no video stream", "give an MP4/WebM/GIF clip")
            segments.append(_Segment(clip, frames, is_clip=True))
            continue
        path, size = _readable_still(Path(spec.stills[index]), index, work_dir)
        crop = _cover_crop(size, spec.width, spec.height)
        segments.append(_Segment(path, frames, is_clip=False, crop=crop, motion=MOTIONS[index % len(MOTIONS)]))
    return segments


def _readable_still(path: Path, index: int, work_dir: Path) -> tuple[Path, tuple[int, int]]:
    """The still as ffmpeg should read it, and its upright size. Files that ffmpeg would misread (EXIF-rotated
    phone photos, alpha, CMYK, 16-bit) are rewritten once as upright RGB PNGs; others are used as they are."""
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(0x0112, 1)
            if orientation == 1 and image.mode in ("RGB", "L") and image.format in ("PNG", "JPEG", "WEBP", "BMP"):
                return path, image.size
            upright = ImageOps.exif_transpose(image)
            flat = Image.new("RGB", upright.size)
            rgba = upright.convert("RGBA")
            flat.paste(rgba, mask=rgba.getchannel("A"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(
            str(path), f"the still is not a readable image ({error})", "re-export it as PNG or JPEG"
        ) from error
    fixed = work_dir / f"still-{index}.png"
    flat.save(fixed, compress_level=1)
    return fixed, flat.size


def _cover_crop(size: tuple[int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred window of the source with the output's aspect (zoompan would otherwise stretch it)."""
    source_w, source_h = size
    if source_w * height > source_h * width:  # wider than the output: cut the sides
        crop_w, crop_h = max(2, round(source_h * width / height)), source_h
    else:
        crop_w, crop_h = source_w, max(2, round(source_w * height / width))
    return crop_w, crop_h, (source_w - crop_w) // 2, (source_h - crop_h) // 2


def _captions(spec: ReelSpec, work_dir: Path) -> tuple[Path, Path] | None:
    """(ASS file, fonts folder) or None when there are no words."""
    if not spec.words:
        return None
    path = work_dir / "captions.ass"
    fonts = subtitles.write_ass(spec.words, spec.width, spec.height, path)
    return path, fonts


# --- audio ----------------------------------------------------------------------------------------------------


def prepare_audio(spec: ReelSpec, duration_s: float, work_dir: Path) -> tuple[Path, _Loudnorm]:
    """Write the mix (exactly `duration_s` long) and measure it (loudnorm pass 1).

    When only its peaks keep pass 2 from linear mode, the mix is made again with the loudness gain applied and a
    peak limiter just under the true-peak target, then re-measured: pass 2 is then a small linear gain instead of
    loudnorm's riding AGC. Limiting lowers the loudness a little and true peaks overshoot a sample-peak limiter a
    little, so gain and ceiling are corrected from each measurement; this settles in one or two rounds."""
    mix = work_dir / AUDIO_FILE
    levels = _levels(spec, duration_s)
    _write_mix(spec, duration_s, mix, levels)
    loudnorm = measure_loudnorm(mix, spec)
    if not _limiting_helps(loudnorm, spec):
        return mix, loudnorm
    gain, ceiling = 0.0, _loudnorm_tp(spec) - LIMITER_MARGIN_DB
    for _ in range(LIMITER_ROUNDS):
        gain += spec.target_lufs - loudnorm.integrated
        _write_mix(spec, duration_s, mix, levels, limiter=(gain, ceiling))
        loudnorm = measure_loudnorm(mix, spec)
        if loudnorm.linear_excess_db(spec) <= 0:
            break
        ceiling -= loudnorm.linear_excess_db(spec) + 0.1
    return mix, loudnorm


def _limiting_helps(loudnorm: _Loudnorm, spec: ReelSpec) -> bool:
    """Linear mode is blocked by the peaks alone (a limiter cannot narrow a loudness range), by no more than
    MAX_LIMITING_DB of peak reduction."""
    if loudnorm.silent or loudnorm.linear_excess_db(spec) <= 0 or float(loudnorm.measured["input_lra"]) > LRA:
        return False
    return loudnorm.linear_excess_db(spec) + LIMITER_MARGIN_DB <= MAX_LIMITING_DB


def _levels(spec: ReelSpec, duration_s: float) -> tuple[float, float]:
    """Gains (dB) for voice and music. With both, each is measured so the bed sits MUSIC_BED_LU under the voice
    whatever levels the files come at (TTS engines and songs differ by 20 dB); alone, loudnorm sets the level."""
    if spec.voice is None or spec.music is None:
        return 0.0, 0.0
    voice = probe.loudness(Path(spec.voice))
    music = probe.loudness(Path(spec.music), limit_s=duration_s)
    voice_gain = 0.0 if probe.is_silent(voice) else VOICE_LEVEL_LUFS - voice.integrated_lufs
    music_gain = 0.0 if probe.is_silent(music) else VOICE_LEVEL_LUFS - MUSIC_BED_LU - music.integrated_lufs
    return voice_gain, music_gain


def _write_mix(
    spec: ReelSpec,
    duration_s: float,
    path: Path,
    levels: tuple[float, float],
    limiter: tuple[float, float] | None = None,
) -> None:
    """Voice and/or music (or silence) as 48 kHz stereo float WAV; `limiter` = (gain dB, sample-peak ceiling dB)."""
    seconds = f"{duration_s:.6f}"
    voice = _voice_stream(spec.voice, levels[0], seconds) if spec.voice is not None else None
    music = _music_stream(spec.music, levels[1], duration_s) if spec.music is not None else None
    if voice is not None and music is not None:
        mix = _duck(voice, music)
    elif voice is not None or music is not None:
        mix = voice if voice is not None else music
    else:
        mix = ffmpeg_python.input(f"anullsrc=r={SAMPLE_RATE}:cl=stereo", f="lavfi").audio
    if limiter is not None:
        gain_db, ceiling_db = limiter
        mix = mix.filter("volume", f"{gain_db:.2f}dB").filter(
            "alimiter", limit=f"{10 ** (ceiling_db / 20):.6f}", level=0, latency=1, attack=5, release=80
        )
    mix = mix.filter("apad", whole_dur=seconds).filter("atrim", end=seconds)  # exact length, whatever came before
    args = ffmpeg_python.output(mix, str(path), acodec="pcm_f32le", ar=SAMPLE_RATE, ac=2, f="wav").get_args()
    ffmpeg.run(args, what="mixing the voice and music")


def _voice_stream(voice: Path, gain_db: float, seconds: str):
    """The voice padded with silence to the reel's length (amix ends with its first input)."""
    stream = _conform(ffmpeg_python.input(str(voice)).audio, gain_db)
    return stream.filter("apad", whole_dur=seconds).filter("atrim", end=seconds)


def _music_stream(music: Path, gain_db: float, duration_s: float):
    """The music looped (`-stream_loop -1`), cut to the reel's length and faded out at the end."""
    fade_start = f"{max(duration_s - MUSIC_FADE_S, 0.0):.6f}"
    stream = _conform(ffmpeg_python.input(str(music), stream_loop=-1).audio, gain_db)
    return stream.filter("atrim", end=f"{duration_s:.6f}").filter("afade", t="out", st=fade_start, d=MUSIC_FADE_S)


def _duck(voice, music):
    """Music ducked under the voice: the voice is split to be both the signal and the compressor's sidechain, and
    amix keeps both at full level (its default `normalize` would halve the voice)."""
    split = voice.filter_multi_output("asplit")
    ducked = ffmpeg_python.filter(
        [music, split[1]], "sidechaincompress", threshold=0.03, ratio=10, attack=20, release=400
    )
    return ffmpeg_python.filter(
        [split[0], ducked], "amix", inputs=2, duration="first", dropout_transition=0, normalize=0
    )


def _conform(stream, gain_db: float):
    """48 kHz float stereo, so voice, music and silence mix and compare sample for sample."""
    stream = stream.filter("aresample", SAMPLE_RATE).filter("aformat", sample_fmts="flt", channel_layouts="stereo")
    return stream.filter("volume", f"{gain_db:.2f}dB") if gain_db else stream


def measure_loudnorm(path: Path, spec: ReelSpec) -> _Loudnorm:
    """loudnorm pass 1 (audio only, a fraction of a second): the values pass 2 needs."""
    stderr = ffmpeg.run(
        ["-nostats", "-i", str(path), "-af", _pass1_filter(spec), "-f", "null", "-"],
        what=f"measuring the loudness of {path.name}",
    )
    return _Loudnorm(measured=_loudnorm_json(stderr))


def _pass1_filter(spec: ReelSpec) -> str:
    return f"loudnorm=I={spec.target_lufs}:TP={_loudnorm_tp(spec)}:LRA={LRA}:print_format=json"


def _loudnorm_tp(spec: ReelSpec) -> float:
    return spec.true_peak_db - AAC_HEADROOM_DB


def _loudnorm_json(stderr: str) -> dict[str, str]:
    matches = _LOUDNORM_JSON.findall(stderr)
    if not matches:
        raise ffmpeg.FFmpegError("reading loudnorm's measurements", 0, stderr, [])
    return json.loads(matches[-1])


def _normalization_type(stderr: str) -> str:
    return _loudnorm_json(stderr)["normalization_type"]


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


# --- the encode -------------------------------------------------------------------------------------------------


def _encode_args(
    spec: ReelSpec,
    timeline: Timeline,
    segments: list[_Segment],
    captions: tuple[Path, Path] | None,
    mix: Path,
    loudnorm: _Loudnorm,
    output: Path,
) -> list[str]:
    sources = _sources(segments)
    branches = [
        _clip_branch(source, segment, spec) if segment.is_clip else _ken_burns_branch(source, segment, spec)
        for source, segment in zip(sources, segments, strict=True)
    ]
    video = branches[0]
    for branch, offset in zip(branches[1:], timeline.fade_offsets_s(), strict=True):
        fade = f"{timeline.fade_frames / timeline.fps:.6f}"
        video = ffmpeg_python.filter([video, branch], "xfade", transition="fade", duration=fade, offset=f"{offset:.6f}")
    if captions is not None:
        video = video.filter("ass", filename=str(captions[0]), fontsdir=str(captions[1]))
    audio = ffmpeg_python.input(str(mix)).audio
    if not loudnorm.silent:
        audio = audio.filter("loudnorm", **_pass2_options(spec, loudnorm))
    audio = audio.filter("aresample", SAMPLE_RATE)  # loudnorm resamples to 192 kHz internally
    options = {**X264, **AAC, "r": spec.fps, "g": 2 * spec.fps, "movflags": "+faststart", "f": "mp4"}
    return ffmpeg_python.output(video, audio, str(output), **options).get_args()


def _pass2_options(spec: ReelSpec, loudnorm: _Loudnorm) -> dict[str, str | float]:
    """Pass 2 applies pass 1's measurements. ffmpeg reads measured_LRA == 0 as "not measured" and then never
    uses linear mode, yet 0.00 is a real measurement (steady audio, or anything under 3 s); 0.01 says the same."""
    m = loudnorm.measured
    return {
        "I": spec.target_lufs,
        "TP": _loudnorm_tp(spec),
        "LRA": LRA,
        "measured_I": m["input_i"],
        "measured_TP": m["input_tp"],
        "measured_LRA": m["input_lra"] if float(m["input_lra"]) > 0 else "0.01",
        "measured_thresh": m["input_thresh"],
        "offset": m["target_offset"],
        "linear": "true",
        "print_format": "json",
    }


def _sources(segments: list[_Segment]) -> list:
    """The video stream each segment starts from: one input per file, split when a file is used more than once.

    ffmpeg-python merges identical nodes, so the same still twice would be one input feeding two filters, which
    ffmpeg refuses; an explicit `split` also decodes the file once."""
    uses = Counter(segment.path for segment in segments)
    splits = {path: ffmpeg_python.input(str(path)).video.split() for path, count in uses.items() if count > 1}
    taken: Counter[Path] = Counter()
    streams = []
    for segment in segments:
        if segment.path in splits:
            streams.append(splits[segment.path][taken[segment.path]])
            taken[segment.path] += 1
        else:
            streams.append(ffmpeg_python.input(str(segment.path)).video)
    return streams


def _ken_burns_branch(source, segment: _Segment, spec: ReelSpec):
    """Crop to the output aspect at source resolution, upscale once (the single input frame is scaled once),
    then zoompan emits `frames` frames of smooth motion at the output size."""
    last = max(segment.frames - 1, 1)
    z, x, y = _motion(segment.motion, last)
    crop_w, crop_h, crop_x, crop_y = segment.crop
    return (
        source.filter("crop", crop_w, crop_h, crop_x, crop_y)
        .filter("scale", UPSCALE * spec.width, UPSCALE * spec.height, out_color_matrix="bt709", out_range="tv")
        .filter("format", "yuv420p")
        .filter("zoompan", z=z, x=x, y=y, d=segment.frames, s=f"{spec.width}x{spec.height}", fps=spec.fps)
        .filter("setsar", 1)
    )


def _motion(kind: str, last: int) -> tuple[str, str, str]:
    """zoompan expressions (zoom, x, y) driven by the output frame number `on`, so the end point is exact."""
    t = f"on/{last}"
    centre_x, centre_y = "iw/2-(iw/zoom/2)", "ih/2-(ih/zoom/2)"
    zoom = KEN_BURNS_ZOOM
    if kind == "zoom_in":
        return f"1+{zoom}*{t}", centre_x, centre_y
    if kind == "zoom_out":
        return f"{1 + zoom}-{zoom}*{t}", centre_x, centre_y
    if kind == "pan_right":
        return f"{1 + zoom}", f"(iw-iw/zoom)*{t}", centre_y
    return f"{1 + zoom}", f"(iw-iw/zoom)*(1-{t})", centre_y


def _clip_branch(source, segment: _Segment, spec: ReelSpec):
    """A clip covers the frame like a still would, at the reel's frame rate; a short clip holds its last frame."""
    return (
        source.filter("fps", spec.fps)
        .filter(
            "scale",
            spec.width,
            spec.height,
            force_original_aspect_ratio="increase",
            out_color_matrix="bt709",
            out_range="tv",
        )
        .filter("crop", spec.width, spec.height)
        .filter("format", "yuv420p")
        .filter("tpad", stop=-1, stop_mode="clone")
        .filter("trim", end_frame=segment.frames)
        .filter("setpts", "PTS-STARTPTS")
        .filter("setsar", 1)
    )


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
