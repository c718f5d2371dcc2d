"""Pre-flight of one video: duration, frame, codecs, frame rate, bitrate and faststart against the platform's rules.

A wrong stream is re-encoded with the reel renderer's settings and a right one copied; a video of the wrong length
or shape is reported, never trimmed, looped or cropped (module docstring of `preflight`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from influencer_pipeline.platforms import FASTSTART_DOC, MB, VideoRules
from influencer_pipeline.publishing.preflight.report import Outcome, aspect_range, megabytes, with_suffix
from influencer_pipeline.video import ffmpeg, probe
from influencer_pipeline.video.spec import AAC, SAMPLE_RATE, X264

X264_KEPT = ("preset", "crf", "maxrate", "bufsize", "profile:v", "pix_fmt")
ASPECT_TOLERANCE = 0.02  # 1080x1920 vs 9:16 exactly; encoders round sizes to even numbers


@dataclass(frozen=True)
class _VideoFindings:
    """One video against the rules: problems block it; the reasons say which streams must be re-encoded."""

    problems: list[str]
    warnings: list[str]
    container: list[str]  # reasons to write a new MP4 (streams may still be copied)
    video: list[str]  # reasons to re-encode the video stream
    audio: list[str]  # reasons to re-encode the audio stream

    @property
    def needs_encode(self) -> bool:
        return bool(self.container or self.video or self.audio)


def check_video(
    rules: VideoRules, platform: str, path: Path, info: probe.MediaInfo, stem: Path, max_duration_s: float | None
) -> Outcome:
    findings = _video_findings(rules, platform, path, info, max_duration_s)
    outcome = Outcome(path, problems=list(findings.problems), warnings=list(findings.warnings))
    if findings.problems:
        return outcome  # fixing the rest would not make it postable: spend no encode on it
    try:
        fixed = _fixed_video(rules, platform, path, info, findings, stem)
    except ffmpeg.FFmpegError as error:
        first_line = str(error).splitlines()[0]
        outcome.problems.append(f"{path.name}: the automatic fix failed ({first_line}). Fix: render it again")
        return outcome
    if fixed is not None:
        outcome.path, change = fixed
        outcome.changes.append(change)
        _verify_fixed(rules, platform, outcome.path, max_duration_s, outcome)
    return outcome


def _fixed_video(
    rules: VideoRules, platform: str, path: Path, info: probe.MediaInfo, findings: _VideoFindings, stem: Path
) -> tuple[Path, str] | None:
    """Re-encode (only the wrong streams) or remux for faststart; the new file and a sentence, or None if fine."""
    if findings.needs_encode:
        fixed = with_suffix(stem, ".mp4")
        _reencode(rules, path, info, findings, fixed)
        reasons = findings.container + findings.video + findings.audio
        streams = [name for name, wrong in (("video", findings.video), ("audio", findings.audio)) if wrong]
        what = f"re-encoded its {' and '.join(streams)}" if streams else "copied its streams into a new MP4"
        return fixed, f"{path.name}: {what} (faststart) as {fixed.name} because {'; '.join(reasons)} ({rules.source})"
    if rules.faststart and _container(path) in ("mp4", "mov") and not probe.is_faststart(path):
        fixed = with_suffix(stem, path.suffix.lower() or ".mp4")
        _remux_faststart(path, fixed)
        return fixed, (
            f"{path.name}: moved the MP4 index (moov) to the front as {fixed.name}, a lossless remux: {platform} "
            f"wants faststart ({rules.source}; {FASTSTART_DOC})"
        )
    return None


def _video_findings(
    rules: VideoRules, platform: str, path: Path, info: probe.MediaInfo, max_duration_s: float | None
) -> _VideoFindings:
    findings = _VideoFindings([], [], [], [], [])
    stream = info.video
    assert stream is not None  # _kind found a video stream
    _duration_findings(rules, platform, path, info.duration_s, max_duration_s, findings)
    _geometry_findings(rules, platform, path, stream, findings)
    _format_findings(rules, platform, path, info, findings)
    return findings


def _duration_findings(
    rules: VideoRules,
    platform: str,
    path: Path,
    duration: float | None,
    max_duration_s: float | None,
    findings: _VideoFindings,
) -> None:
    if duration is None:
        findings.problems.append(f"{path.name}: ffmpeg reads no duration from it. Fix: render it again")
        return
    low, high = rules.duration_s
    source = rules.source
    if max_duration_s is not None and (high is None or max_duration_s < high):
        high, source = max_duration_s, "this account's own limit"
    if low is not None and duration < low:
        findings.problems.append(
            f"{path.name}: {duration:.1f} s long, {platform} needs at least {low:g} s ({source}). "
            "Fix: render a longer video (it is not looped or padded automatically)"
        )
    if high is not None and duration > high:
        findings.problems.append(
            f"{path.name}: {duration:.1f} s long, {platform} takes at most {high:g} s ({source}). "
            "Fix: render a shorter video (it is not trimmed automatically: the end would be lost)"
        )
    advice = rules.recommended_duration_s
    if advice and not advice[0] <= duration <= advice[1]:
        findings.warnings.append(
            f"{path.name}: {duration:.1f} s is outside {platform}'s reel length {advice[0]:g}-{advice[1]:g} s "
            f"({rules.source}): it posts as a regular video, not a reel"
        )


def _geometry_findings(
    rules: VideoRules, platform: str, path: Path, stream: probe.VideoStream, findings: _VideoFindings
) -> None:
    width, height = stream.width, stream.height
    if not width or not height:
        findings.problems.append(f"{path.name}: ffmpeg reads no frame size from it. Fix: render it again")
        return
    short, long = sorted((width, height))
    if rules.min_size and (short < rules.min_size[0] or long < rules.min_size[1]):
        findings.problems.append(
            f"{path.name}: {width}x{height} is smaller than {platform}'s minimum {rules.min_size[0]} px per side "
            f"({rules.source}). Fix: render at a higher resolution (it is not upscaled automatically)"
        )
    if rules.recommended_min_size and (short < rules.recommended_min_size[0] or long < rules.recommended_min_size[1]):
        findings.warnings.append(
            f"{path.name}: {width}x{height} is under {platform}'s recommended minimum "
            f"{rules.recommended_min_size[0]}x{rules.recommended_min_size[1]} ({rules.source}): it will look soft"
        )
    ratio = width / height
    if rules.aspect and not rules.aspect[0] <= ratio <= rules.aspect[1]:
        findings.problems.append(
            f"{path.name}: {width}x{height} ({ratio:.2f}:1) is outside {platform}'s {aspect_range(rules.aspect)} "
            f"({rules.source}){_shorts_hint(platform)}. Fix: render it in a vertical or square frame "
            "(it is not cropped automatically: a video's subject moves)"
        )
    elif rules.recommended_aspect and abs(ratio / rules.recommended_aspect - 1) > ASPECT_TOLERANCE:
        findings.warnings.append(
            f"{path.name}: {ratio:.2f}:1 is not 9:16, which {platform} recommends ({rules.source}): "
            "expect cropping or bars"
        )
    if _video_scale(rules, width, height) < 1:
        findings.video.append(f"{width}x{height} is larger than {platform} takes ({_video_size_limit(rules)})")


def _shorts_hint(platform: str) -> str:
    return ": only a square or vertical video of at most 3 minutes is a Short" if platform == "YouTube" else ""


def _format_findings(
    rules: VideoRules, platform: str, path: Path, info: probe.MediaInfo, findings: _VideoFindings
) -> None:
    stream, audio = info.video, info.audio
    assert stream is not None
    container = _container(path)
    if rules.containers is not None and container not in rules.containers:
        findings.container.append(f"{platform} takes {'/'.join(sorted(rules.containers))}, not {container}")
    if rules.video_codecs is not None and stream.codec not in rules.video_codecs:
        findings.video.append(f"{platform} takes {'/'.join(sorted(rules.video_codecs))} video, not {stream.codec}")
    if rules.pix_fmts is not None and stream.pix_fmt not in rules.pix_fmts:
        findings.video.append(
            f"{platform} takes 4:2:0 video ({'/'.join(sorted(rules.pix_fmts))}), not {stream.pix_fmt}"
        )
    if rules.fps is not None and not rules.fps[0] <= stream.fps <= rules.fps[1]:
        findings.video.append(f"{stream.fps:g} fps is outside {platform}'s {rules.fps[0]:g}-{rules.fps[1]:g} fps")
    size, duration = path.stat().st_size, info.duration_s or 0
    if rules.max_bitrate and duration > 0 and size * 8 / duration > rules.max_bitrate:
        findings.video.append(
            f"{size * 8 / duration / MB:.1f} Mbps is over {platform}'s {rules.max_bitrate / MB:g} Mbps"
        )
    if rules.max_bytes and size > rules.max_bytes:
        findings.problems.append(
            f"{path.name}: {megabytes(size)} is over {platform}'s {megabytes(rules.max_bytes)} ({rules.source}). "
            "Fix: render it at a lower bitrate"
        )
    if audio is not None and rules.audio_codecs is not None and audio.codec not in rules.audio_codecs:
        findings.audio.append(f"{platform} takes {'/'.join(sorted(rules.audio_codecs))} audio, not {audio.codec}")
    if audio is not None and rules.max_audio_hz and audio.sample_rate > rules.max_audio_hz:
        findings.audio.append(f"{audio.sample_rate} Hz audio is over {platform}'s {rules.max_audio_hz} Hz")


def _container(path: Path) -> str:
    """The container from the file's first bytes, not its name: 'mp4', 'mov', 'webm', 'mkv' or 'other'."""
    with open(path, "rb") as stream:
        head = stream.read(64)
    if head[4:8] == b"ftyp":
        return "mov" if head[8:12] == b"qt  " else "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in head else "mkv"
    return "other"


def _video_scale(rules: VideoRules, width: int, height: int) -> float:
    scale = 1.0
    if rules.max_width:
        scale = min(scale, rules.max_width / width)
    if rules.max_side:
        scale = min(scale, rules.max_side / max(width, height))
    return scale


def _video_size_limit(rules: VideoRules) -> str:
    limits = [f"{rules.max_width} px wide"] if rules.max_width else []
    limits += [f"{rules.max_side} px per side"] if rules.max_side else []
    return " and ".join(limits)


def _reencode(rules: VideoRules, path: Path, info: probe.MediaInfo, findings: _VideoFindings, target: Path) -> None:
    """One ffmpeg pass to an MP4 with faststart; a stream that was already right is copied, not re-encoded."""
    stream = info.video
    assert stream is not None
    args = ["-i", str(path), "-map", "0:v:0", "-map", "0:a:0?", "-sn", "-dn"]
    if findings.video:
        args += _x264_args(rules, stream)
    else:
        args += ["-c:v", "copy"]
    if findings.audio:
        args += ["-c:a", AAC["acodec"], "-b:a", AAC["b:a"], "-ar", str(SAMPLE_RATE), "-ac", str(AAC["ac"])]
    else:
        args += ["-c:a", "copy"]
    _write_atomically(target, [*args, "-movflags", "+faststart", "-f", "mp4"], f"re-encoding {path.name}")


def _x264_args(rules: VideoRules, stream: probe.VideoStream) -> list[str]:
    """The reel renderer's H.264 settings, scaled down to fit and to even sides (4:2:0), frame rate clamped.

    The renderer's BT.709 tags are left out: they describe its own output, while here ffmpeg carries the source's
    colour tags over, and tagging a BT.601 source as BT.709 would shift its colours."""
    scale = _video_scale(rules, stream.width, stream.height)
    width = max(2, math.floor(stream.width * scale / 2) * 2)
    height = max(2, math.floor(stream.height * scale / 2) * 2)
    filters = [f"scale={width}:{height}"]
    if rules.fps is not None and not rules.fps[0] <= stream.fps <= rules.fps[1]:
        filters.append(f"fps={min(max(stream.fps or 30, rules.fps[0]), rules.fps[1]):g}")
    args = ["-c:v", X264["vcodec"], "-vf", ",".join(filters)]
    for key in X264_KEPT:
        args += [f"-{key}", str(X264[key])]
    return args


def _remux_faststart(path: Path, target: Path) -> None:
    _write_atomically(target, ["-i", str(path), "-map", "0", "-c", "copy", "-movflags", "+faststart"], "remuxing")


def _write_atomically(target: Path, args: list[str], what: str) -> None:
    """Write to a temporary name, then rename: an interrupted run never leaves a half file that looks fixed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.stem}.part{target.suffix}")
    try:
        ffmpeg.run([*args, str(partial.absolute())], what=f"{what} for pre-flight")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _verify_fixed(
    rules: VideoRules, platform: str, fixed: Path, max_duration_s: float | None, outcome: Outcome
) -> None:
    """Probe the fixed copy against the same rules: a fix is only reported as one if the result passes."""
    findings = _video_findings(rules, platform, fixed, probe.probe(fixed), max_duration_s)
    left = findings.problems + findings.container + findings.video + findings.audio
    if rules.faststart and not probe.is_faststart(fixed):
        left.append("its MP4 index is still at the end")
    if left:
        outcome.problems.append(
            f"{fixed.name}: the automatic fix did not make it postable ({'; '.join(left)}). Fix: render it again "
            "with H.264 High yuv420p, AAC 48 kHz, MP4 with faststart"
        )
