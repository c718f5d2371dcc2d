"""Probing without ffprobe: the `ffmpeg -i` header, ebur128 loudness, and MP4 box order."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from influencer_pipeline.errors import InputError
from influencer_pipeline.video import ffmpeg, probe
from tests.video.conftest import make_tone

HEADER = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'reel.mp4':
  Metadata:
    major_brand     : isom
  Duration: 00:01:02.53, start: 0.000000, bitrate: 5220 kb/s
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709, progressive), 1080x1920 [SAR 1:1 \
DAR 9:16], 5000 kb/s, 29.97 fps, 30 tbr, 15360 tbn (default)
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, stereo, fltp, 192 kb/s (default)
At least one output file must be specified
"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """0.5 s of H.264 Main 320x240 at 25 fps with mono 44.1 kHz AAC, not faststart (the muxer's default)."""
    path = tmp_path_factory.mktemp("probe") / "clip.mp4"
    sources = ["-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=0.5", "-f", "lavfi", "-i", "sine=f=440:d=0.5:r=44100"]
    codecs = ["-c:v", "libx264", "-profile:v", "main", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "1"]
    ffmpeg.run([*sources, *codecs, str(path)], what="making a test clip")
    return path


def test_header_text_is_parsed():
    info = probe.parse_header(Path("reel.mp4"), HEADER)
    assert info.duration_s == pytest.approx(62.53)
    assert info.video == probe.VideoStream("h264", "High", "yuv420p", 1080, 1920, 29.97)
    assert info.audio == probe.AudioStream("aac", "LC", 48000, 2)


def test_a_still_image_has_a_codec_without_profile():
    text = (
        "Input #0, png_pipe, from 'a.png':\n  Duration: N/A, bitrate: N/A\n"
        "  Stream #0:0: Video: png, rgb24(pc, gbr/unknown/unknown), 1024x1536, 25 fps, 25 tbr, 25 tbn\n"
    )
    info = probe.parse_header(Path("a.png"), text)
    assert info.duration_s is None
    assert info.video == probe.VideoStream("png", "", "rgb24", 1024, 1536, 25.0)
    assert info.audio is None


def test_a_wav_header_with_a_fourcc_group_has_no_profile():
    text = (
        "  Duration: 00:00:04.00, bitrate: 352 kb/s\n"
        "  Stream #0:0: Audio: pcm_s16le ([1][0][0][0] / 0x0001), 22050 Hz, mono, s16, 352 kb/s\n"
    )
    assert probe.parse_header(Path("v.wav"), text).audio == probe.AudioStream("pcm_s16le", "", 22050, 1)


def test_a_real_file_is_probed(clip):
    info = probe.probe(clip)
    assert info.duration_s == pytest.approx(0.5, abs=0.05)
    assert (info.video.codec, info.video.profile, info.video.pix_fmt) == ("h264", "Main", "yuv420p")
    assert (info.video.width, info.video.height, info.video.fps) == (320, 240, 25.0)
    assert info.audio == probe.AudioStream("aac", "LC", 44100, 1)


def test_faststart_is_read_from_the_box_order(clip, tmp_path):
    assert not probe.is_faststart(clip)
    moved = tmp_path / "moved.mp4"
    ffmpeg.run(["-i", str(clip), "-c", "copy", "-movflags", "+faststart", str(moved)], what="remuxing")
    assert probe.is_faststart(moved)
    assert probe.mp4_boxes(moved)[:2] == ["ftyp", "moov"]


def test_box_walk_handles_64_bit_and_to_the_end_sizes(tmp_path):
    path = tmp_path / "boxes.mp4"
    ftyp = struct.pack(">I4s", 16, b"ftyp") + b"isom\0\0\0\0"
    mdat = struct.pack(">I4sQ", 1, b"mdat", 24) + b"\0" * 8
    moov = struct.pack(">I4s", 0, b"moov") + b"\0" * 20
    path.write_bytes(ftyp + mdat + moov)
    assert probe.mp4_boxes(path) == ["ftyp", "mdat", "moov"]
    assert not probe.is_faststart(path)


def test_corrupt_box_size_is_an_error(tmp_path):
    path = tmp_path / "bad.mp4"
    path.write_bytes(struct.pack(">I4s", 4, b"ftyp") + b"\0" * 8)
    with pytest.raises(ValueError, match="corrupt MP4 box"):
        probe.mp4_boxes(path)


def test_loudness_of_a_sine_matches_theory(tmp_path):
    loud = probe.loudness(make_tone(tmp_path / "loud.wav", "0.5*sin(2*PI*997*t)", 4))
    quiet = probe.loudness(make_tone(tmp_path / "quiet.wav", "0.25*sin(2*PI*997*t)", 4))
    assert loud.true_peak_db == pytest.approx(20 * math.log10(0.5), abs=0.2)
    assert loud.integrated_lufs - quiet.integrated_lufs == pytest.approx(6.02, abs=0.2)


def test_silence_is_at_the_meters_floor(tmp_path):
    level = probe.loudness(make_tone(tmp_path / "silence.wav", "0", 2))
    assert level.integrated_lufs <= -70.0  # ebur128's floor
    assert math.isinf(level.true_peak_db) and level.true_peak_db < 0
    assert probe.is_silent(level)


def test_loudness_can_stop_early(tmp_path):
    song = make_tone(tmp_path / "song.wav", "0.5*sin(2*PI*440*t)*lt(t,2)", 6)  # silent after 2 s
    assert probe.loudness(song, limit_s=2).integrated_lufs > probe.loudness(song).integrated_lufs


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        probe.probe(tmp_path / "nope.mp4")


def test_unreadable_file_raises_with_ffmpegs_reason(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0garbage" * 100)
    with pytest.raises(ffmpeg.FFmpegError, match="Invalid data found when processing input"):
        probe.probe(junk)


def test_the_binary_is_imageio_ffmpegs_own(monkeypatch):
    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)
    ffmpeg.ffmpeg_exe.cache_clear()
    try:
        assert "imageio_ffmpeg" in Path(ffmpeg.ffmpeg_exe()).parts
    finally:
        ffmpeg.ffmpeg_exe.cache_clear()


def test_a_failing_command_reports_its_step_exit_status_and_stderr_tail(tmp_path):
    with pytest.raises(ffmpeg.FFmpegError) as caught:
        ffmpeg.run(["-i", str(tmp_path / "absent.wav"), "-f", "null", "-"], what="testing failure")
    error = caught.value
    assert error.returncode != 0
    assert str(error).startswith("ffmpeg failed while testing failure (exit status")
    assert "No such file or directory" in str(error)
    assert "absent.wav" in str(error).split("--- command ---")[1]


def test_progress_lines_are_throttled_and_end_at_100_percent():
    lines: list[str] = []
    parser = ffmpeg.ProgressParser("encoding", 10.0, lines.append)
    for tenth in range(1, 41):
        for line in (f"out_time_us={tenth * 250_000}", "speed=1.5x", "progress=continue"):
            parser.feed(line + "\n")
    parser.feed("out_time_us=10000000\n")
    parser.feed("progress=end\n")
    assert lines[0] == "encoding: 10% (1.0/10.0 s, speed 1.5x)"
    assert lines[-1].startswith("encoding: 100% (10.0/10.0 s")
    assert len(lines) <= 11


def test_progress_ignores_blocks_without_a_time():
    lines: list[str] = []
    parser = ffmpeg.ProgressParser("x", 5.0, lines.append)
    for line in ("out_time_us=N/A", "progress=continue", "", "out_time_ms=5000000", "progress=end"):
        parser.feed(line)
    assert lines == ["x: 100% (5.0/5.0 s)"]
