"""The reel's picture as one ffmpeg filter graph: a Ken Burns `zoompan` branch per still (or a clip), joined by
`xfade`, captions burned with `ass`, the mix normalised by loudnorm pass 2, encoded H.264/AAC with faststart.

Filters: https://ffmpeg.org/ffmpeg-filters.html (zoompan, xfade, ass, loudnorm); graphs are compiled with
ffmpeg-python (https://kkroening.github.io/ffmpeg-python/), run by `ffmpeg.run`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import ffmpeg as ffmpeg_python
from PIL import Image, ImageOps, UnidentifiedImageError

import influencer_pipeline.video.probe as probe
from influencer_pipeline.errors import InputError
from influencer_pipeline.video.audio import Loudnorm, pass2_options
from influencer_pipeline.video.spec import AAC, SAMPLE_RATE, X264, ReelSpec, Timeline

# zoompan crops at whole input pixels, so motion wobbles by up to 1/UPSCALE output px. Measured (dot tracked over
# 150 frames at 1080x1920): max deviation from smooth 1.06 / 0.54 / 0.36 / 0.27 px at 1x / 2x / 3x / 4x; a 15 s
# reel on 2 cores renders in 11.0 / 12.9 / 14.7 s at 2x / 3x / 4x. 4x is the smooth end of that trade.
UPSCALE = 4
KEN_BURNS_ZOOM = 0.15  # zoom travel per still: 1.00 -> 1.15
MOTIONS = ("zoom_in", "pan_right", "zoom_out", "pan_left")


@dataclass(frozen=True)
class Segment:
    """One still (cropped to the output aspect) or one clip, and its motion."""

    path: Path
    frames: int
    is_clip: bool
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)  # w, h, x, y in source pixels
    motion: str = "zoom_in"


def plan_segments(spec: ReelSpec, timeline: Timeline, work_dir: Path) -> list[Segment]:
    """Clips replace the first stills' motion, in order; each remaining still gets the next Ken Burns move."""
    segments = []
    for index, frames in enumerate(timeline.segment_frames):
        if index < len(spec.clips):
            clip = Path(spec.clips[index])
            if probe.probe(clip).video is None:
                raise InputError(str(clip), "has no video stream", "give an MP4/WebM/GIF clip")
            segments.append(Segment(clip, frames, is_clip=True))
            continue
        path, size = readable_still(Path(spec.stills[index]), index, work_dir)
        crop = _cover_crop(size, spec.width, spec.height)
        segments.append(Segment(path, frames, is_clip=False, crop=crop, motion=MOTIONS[index % len(MOTIONS)]))
    return segments


def readable_still(path: Path, index: int, work_dir: Path) -> tuple[Path, tuple[int, int]]:
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


def encode_args(
    spec: ReelSpec,
    timeline: Timeline,
    segments: list[Segment],
    captions: tuple[Path, Path] | None,
    mix: Path,
    loudnorm: Loudnorm,
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
        audio = audio.filter("loudnorm", **pass2_options(spec, loudnorm))
    audio = audio.filter("aresample", SAMPLE_RATE)  # loudnorm resamples to 192 kHz internally
    options = {**X264, **AAC, "r": spec.fps, "g": 2 * spec.fps, "movflags": "+faststart", "f": "mp4"}
    return ffmpeg_python.output(video, audio, str(output), **options).get_args()


def _sources(segments: list[Segment]) -> list:
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


def _ken_burns_branch(source, segment: Segment, spec: ReelSpec):
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


def _clip_branch(source, segment: Segment, spec: ReelSpec):
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
