"""Rendering reels end to end at small sizes (and once at 1080x1920), read back with the project's own probe."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from influencer_pipeline.errors import InputError
from influencer_pipeline.video import aspects, ffmpeg, render, subtitles
from influencer_pipeline.video.render import ReelSpec, check_reel, measure_loudnorm, plan_timeline, thumbnail
from influencer_pipeline.video.subtitles import CaptionStyle, Word
from tests.video.conftest import SMALL, audio_samples, band_level_db, frame_at, make_tone


@pytest.fixture(scope="module")
def vertical(render, spec):
    messages: list[str] = []
    report = render(spec, "vertical", progress=messages.append)
    return report, messages


def test_vertical_reel_meets_every_platform_rule(vertical, spec):
    report, _ = vertical
    assert check_reel(report, spec) == []
    assert (report.width, report.height) == SMALL
    assert (report.video_codec, report.profile, report.pix_fmt) == ("h264", "High", "yuv420p")
    assert (report.audio_codec, report.sample_rate, report.channels) == ("aac", 48000, 2)
    assert report.duration_s == pytest.approx(2.5 + render.TAIL_S, abs=2 / 30)
    assert report.faststart
    assert abs(report.integrated_lufs - -14.0) <= 1.0
    assert report.true_peak_db <= -1.4
    assert report.loudnorm_mode == "linear"
    assert report.size_bytes == report.output.stat().st_size
    assert report.realtime_factor == pytest.approx(report.render_s / report.duration_s)


def test_progress_is_reported_in_steps(vertical):
    _, messages = vertical
    encoding = [m for m in messages if m.startswith("encoding")]
    assert encoding and encoding[-1].startswith("encoding the 216x384 reel: 100%")
    assert len(encoding) <= 12  # a line per tenth at most, not one per ffmpeg progress block


def test_no_partial_file_is_left_next_to_the_output(vertical):
    report, _ = vertical
    assert [p.name for p in report.output.parent.iterdir() if p.suffix == ".mp4"] == [report.output.name]


def test_thumbnail_is_a_small_jpeg(vertical):
    report, _ = vertical
    data = thumbnail(report.output, at_s=1.0)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (180, 320)


def test_thumbnail_past_the_end_is_a_clear_error(vertical):
    report, _ = vertical
    with pytest.raises(InputError, match=r"no frame at 99\.00 s"):
        thumbnail(report.output, at_s=99.0)


def test_captions_are_burned_in_and_highlight_the_spoken_word(vertical, render, spec):
    report, _ = vertical
    plain = render(dataclasses.replace(spec, words=[]), "no-captions")
    width, height = SMALL
    style = CaptionStyle.for_frame(width, height)
    top = height - style.margin_bottom - 3 * style.font_size
    band = slice(top, height - style.margin_bottom + style.font_size)

    def caption_pixels(at_s: float) -> tuple[float, int]:
        with_text = frame_at(report.output, at_s, width, height).astype(int)
        without = frame_at(plain.output, at_s, width, height).astype(int)
        changed = np.abs(with_text - without).sum(axis=2) > 60
        assert np.abs(with_text - without)[: height // 2].mean() < 3  # nothing but captions differs
        r, g, b = (with_text[band][..., i] for i in range(3))
        yellow = changed[band] & (r > 190) & (g > 170) & (b < 90)
        return changed[band].mean(), int(yellow.sum())

    first_word, first_line = caption_pixels(0.1), caption_pixels(0.5)  # "Hello" spoken; then "Hello there,"
    assert first_word[0] > 0.02
    assert first_line[1] > 1.4 * first_word[1]  # the second word turned yellow when spoken
    assert caption_pixels(1.3)[0] < 0.005  # the pause: the first line is gone, the second not yet up


def test_captions_need_no_system_fonts(vertical, render, spec, tmp_path, monkeypatch):
    """With fontconfig pointed at an empty configuration (a machine with no fonts installed), the captions come
    out the same: libass takes DejaVu Sans from matplotlib through `fontsdir`."""
    (tmp_path / "fonts.conf").write_text("<?xml version='1.0'?><fontconfig></fontconfig>")
    monkeypatch.setenv("FONTCONFIG_FILE", str(tmp_path / "fonts.conf"))
    bare = render(spec, "no-system-fonts")
    reference, _ = vertical
    for at_s in (0.1, 1.8):
        difference = frame_at(bare.output, at_s, *SMALL).astype(int) - frame_at(reference.output, at_s, *SMALL)
        assert np.abs(difference).max() <= 2


def test_stills_are_cropped_to_the_frame_not_stretched(render, tmp_path):
    still = Image.new("RGB", (640, 480))
    ImageDraw.Draw(still).ellipse((220, 140, 420, 340), fill="white")
    still.save(tmp_path / "circle.png")
    spec = ReelSpec(stills=[tmp_path / "circle.png"], voice=None, words=[], width=216, height=384, seconds_per_still=1)
    report = render(spec, "circle")
    ys, xs = np.nonzero(frame_at(report.output, 0.0, 216, 384).mean(axis=2) > 128)
    assert (np.ptp(xs) + 1) / (np.ptp(ys) + 1) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(("aspect", "size"), [("1:1", (216, 216)), ("16:9", (384, 216))])
def test_square_and_landscape_reels(render, spec, aspect, size):
    assert aspects.ASPECTS[aspect].width * size[1] == aspects.ASPECTS[aspect].height * size[0]
    square_spec = dataclasses.replace(spec, width=size[0], height=size[1])
    report = render(square_spec, f"aspect-{aspect.replace(':', 'x')}")
    assert check_reel(report, square_spec) == []


def test_paths_with_filtergraph_and_protocol_specials_work(spec, tmp_path, monkeypatch):
    """The caption path goes into the filter graph (escaped by ffmpeg-python at both levels) and a relative input
    with a colon would read as a protocol ("we:ird" -> protocol "we"); both must just work."""
    odd = Path("we:ird, [dir] it's")
    (tmp_path / odd).mkdir()
    shutil.copy(spec.stills[0], tmp_path / odd / "still.png")
    monkeypatch.chdir(tmp_path)
    odd_spec = dataclasses.replace(spec, stills=[odd / "still.png"], voice=Path(shutil.copy(spec.voice, odd)))
    report = render.render_reel(odd_spec, odd / "reel.mp4", odd / "work")
    assert check_reel(report, odd_spec) == []


def test_full_size_vertical_reel(render, stills, tmp_path):
    voice = make_tone(tmp_path / "voice.wav", "0.3*sin(2*PI*180*t)*(0.6+0.4*sin(2*PI*4*t))", 1.5)
    words = [Word("Full", 0.1, 0.5), Word("size", 0.6, 1.0), Word("reel", 1.1, 1.4)]
    spec = ReelSpec(stills=stills[:2], voice=voice, words=words, width=1080, height=1920)
    report = render(spec, "full-size")
    assert check_reel(report, spec) == []
    assert (report.width, report.height, report.duration_s) == (1080, 1920, pytest.approx(2.0, abs=2 / 30))


def test_music_is_ducked_under_the_voice_and_looped(render, stills, tmp_path):
    voice = make_tone(tmp_path / "voice.wav", "0.3*sin(2*PI*300*t)*(lt(t,1)+between(t,2.2,3))", 3.0)
    music = make_tone(tmp_path / "music.wav", "0.2*sin(2*PI*3000*t)", 0.7, rate=44100)  # loops 5 times
    spec = ReelSpec(stills=stills[:1], voice=voice, words=[], width=216, height=384, music=music)
    report = render(spec, "music")
    assert check_reel(report, spec) == []
    samples = audio_samples(report.output)
    under_voice = band_level_db(samples, 48000, 0.3, 0.9, 3000)
    in_the_pause = band_level_db(samples, 48000, 1.5, 2.1, 3000)  # the music's third loop
    assert in_the_pause - under_voice >= 6.0


def test_peaky_voice_is_limited_so_loudnorm_stays_linear(render, stills, tmp_path):
    bursts = "0.1*sin(2*PI*220*t)*(0.6+0.4*sin(2*PI*3*t))+0.5*sin(2*PI*1000*t)*lt(mod(t,0.5),0.004)"
    voice = make_tone(tmp_path / "peaky.wav", bursts, 2.5)
    spec = ReelSpec(stills=stills[:1], voice=voice, words=[], width=216, height=384)
    assert measure_loudnorm(voice, spec).linear_excess_db(spec) > 0  # as it comes: dynamic mode
    report = render(spec, "peaky")
    assert report.loudnorm_mode == "linear"
    assert check_reel(report, spec) == []


def test_music_alone_is_normalised(render, stills, tmp_path):
    music = make_tone(tmp_path / "music.wav", "0.05*sin(2*PI*440*t)", 0.8, rate=44100)
    spec = ReelSpec(stills=stills[:1], voice=None, words=[], width=216, height=384, seconds_per_still=1.5, music=music)
    report = render(spec, "music-alone")
    assert report.loudnorm_mode == "linear"
    assert check_reel(report, spec) == []


def test_rotated_or_transparent_stills_are_made_upright_rgb_first(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated 90 degrees: how phones save portraits
    Image.new("RGB", (300, 200), "red").save(tmp_path / "phone.jpg", exif=exif)
    Image.new("RGBA", (120, 80), (0, 0, 255, 0)).save(tmp_path / "alpha.png")
    upright, size = render.readable_still(tmp_path / "phone.jpg", 0, tmp_path)
    assert (upright.name, size) == ("still-0.png", (200, 300))
    flat, _ = render.readable_still(tmp_path / "alpha.png", 1, tmp_path)
    with Image.open(flat) as image:
        assert image.mode == "RGB" and image.getpixel((0, 0)) == (0, 0, 0)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (64, 64)).save(plain)
    assert render.readable_still(plain, 2, tmp_path) == (plain, (64, 64))  # used as is, no copy


def test_video_clip_replaces_the_first_stills_motion(render, spec, tmp_path):
    clip = tmp_path / "clip.mp4"
    ffmpeg.run(["-f", "lavfi", "-i", "testsrc=s=320x240:r=25:d=0.8", "-pix_fmt", "yuv420p", str(clip)], what="clip")
    clip_spec = dataclasses.replace(spec, stills=spec.stills[:2], clips=[clip])
    report = render(clip_spec, "clip")
    assert check_reel(report, clip_spec) == []


def test_the_same_still_can_appear_twice(render, stills):
    """ffmpeg-python would merge the two identical inputs into one node feeding two filters; it is split instead."""
    repeated = [stills[0], stills[1], stills[0]]
    spec = ReelSpec(repeated, voice=None, words=[], width=216, height=384, seconds_per_still=1.2, crossfade_s=0.2)
    assert check_reel(render(spec, "repeated"), spec) == []


def test_reel_without_voice_has_a_silent_track(render, stills):
    spec = ReelSpec(stills=stills[:2], voice=None, words=[], width=216, height=384, seconds_per_still=1.0)
    report = render(spec, "silent")
    assert report.loudnorm_mode == "none"
    assert report.duration_s == pytest.approx(1.5, abs=2 / 30)
    assert check_reel(report, spec) == []


def test_check_reel_names_each_problem(vertical, spec):
    report, _ = vertical
    broken = dataclasses.replace(
        report, duration_s=9.0, profile="Main", sample_rate=44100, faststart=False, integrated_lufs=-18.0
    )
    problems = check_reel(broken, spec)
    assert len(problems) == 5
    assert any("duration is 9.000 s" in p for p in problems)
    assert any("-18.0 LUFS" in p for p in problems)


# --- timing -----------------------------------------------------------------------------------------------------


def test_stills_share_the_voice_plus_a_tail_exactly_to_the_frame():
    timeline = plan_timeline(3, 30, voice_s=14.5, seconds_per_still=None, crossfade_s=0.5)
    assert timeline.total_frames == 450
    assert sum(timeline.segment_frames) == 450 + 2 * 15
    assert timeline.fade_offsets_s() == pytest.approx([(160 - 15) / 30, (320 - 30) / 30])


def test_fixed_seconds_per_still_cannot_cut_the_voice():
    with pytest.raises(InputError, match="the voice would be cut"):
        plan_timeline(2, 30, voice_s=5.0, seconds_per_still=2.0, crossfade_s=0.5)


def test_crossfades_longer_than_the_stills_are_refused():
    with pytest.raises(InputError, match="crossfade_s"):
        plan_timeline(10, 30, voice_s=2.0, seconds_per_still=None, crossfade_s=0.5)


def test_no_voice_and_no_seconds_per_still_uses_the_default():
    timeline = plan_timeline(2, 30, voice_s=None, seconds_per_still=None, crossfade_s=0.5)
    assert timeline.duration_s == pytest.approx(2 * render.DEFAULT_SECONDS_PER_STILL - 0.5)


# --- clear errors -----------------------------------------------------------------------------------------------


def test_missing_still_is_named(spec, tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(InputError, match=r"nope\.png: the still file does not exist"):
        render.render_reel(dataclasses.replace(spec, stills=[missing]), tmp_path / "o.mp4", tmp_path / "w")


def test_unreadable_still_is_named(spec, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture at all")
    with pytest.raises(InputError, match=r"broken\.png: the still is not a readable image.*Fix: re-export"):
        render.render_reel(dataclasses.replace(spec, stills=[broken]), tmp_path / "o.mp4", tmp_path / "w")


def test_missing_font_names_the_fix(spec, tmp_path, monkeypatch):
    monkeypatch.setattr(subtitles, "default_font_file", lambda: tmp_path / "gone" / "DejaVuSans-Bold.ttf")
    with pytest.raises(subtitles.FontNotFoundError, match=r"does not exist\. Fix: install matplotlib"):
        render.render_reel(spec, tmp_path / "o.mp4", tmp_path / "w")


def test_output_folder_that_cannot_exist_is_named(spec, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(InputError, match="taken/reels: the output folder cannot be written"):
        render.render_reel(spec, blocker / "reels" / "o.mp4", tmp_path / "w")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_output_folder_is_named(spec, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match="read-only: the output folder cannot be written"):
            render.render_reel(spec, folder / "o.mp4", tmp_path / "w")
    finally:
        folder.chmod(0o700)


def test_ffmpeg_failure_carries_the_stderr_tail(spec, tmp_path):
    garbage = tmp_path / "voice.wav"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(ffmpeg.FFmpegError) as caught:
        render.render_reel(dataclasses.replace(spec, voice=garbage), tmp_path / "o.mp4", tmp_path / "w")
    message = str(caught.value)
    assert "ffmpeg failed while reading" in message
    assert "Invalid data found when processing input" in message
    assert "last lines of ffmpeg's output" in message


def test_too_many_stills_are_refused(spec, tmp_path):
    with pytest.raises(InputError, match="11 stills given"):
        render.render_reel(dataclasses.replace(spec, stills=(spec.stills * 4)[:11]), tmp_path / "o.mp4", tmp_path)


# --- platforms ----------------------------------------------------------------------------------------------


def test_every_platform_gets_a_vertical_reel():
    assert aspects.aspects_for(["instagram", "tiktok", "youtube", "facebook"]) == [aspects.VERTICAL]


def test_feed_placement_adds_square_for_facebook_and_landscape_for_youtube():
    assert aspects.aspects_for(["youtube", "facebook", "tiktok"], placement="feed") == [
        aspects.VERTICAL,
        aspects.SQUARE,
        aspects.LANDSCAPE,
    ]


def test_unknown_platform_is_named():
    with pytest.raises(InputError, match="'myspace'"):
        aspects.aspects_for(["myspace"])
