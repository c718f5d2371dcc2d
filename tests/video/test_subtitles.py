"""Caption lines from word timings and the ASS file they become (pixel-sized, karaoke-highlighted)."""

from __future__ import annotations

import re

import pytest

from influencer_pipeline.errors import InputError
from influencer_pipeline.video import subtitles
from influencer_pipeline.video.subtitles import CaptionStyle, Word


def words_at(*texts_and_starts: tuple[str, float], length: float = 0.25) -> list[Word]:
    return [Word(text, start, start + length) for text, start in texts_and_starts]


def test_lines_hold_a_few_words():
    words = words_at(*[(f"w{i}", i * 0.3) for i in range(7)])
    assert [len(line) for line in subtitles.group_lines(words, max_chars=40)] == [3, 3, 1]


def test_punctuation_and_pauses_start_new_lines():
    words = words_at(("Hi", 0.0), ("there!", 0.3), ("Look", 0.6), ("here", 2.0), ("now", 2.3))
    lines = subtitles.group_lines(words, max_chars=40)
    assert [[w.text for w in line] for line in lines] == [["Hi", "there!"], ["Look"], ["here", "now"]]


def test_long_words_start_new_lines_by_width():
    words = words_at(("extraordinary", 0.0), ("circumstances", 0.3), ("today", 0.6))
    assert [len(line) for line in subtitles.group_lines(words, max_chars=17)] == [1, 1, 1]


def test_empty_words_are_skipped():
    assert subtitles.group_lines(words_at((" ", 0.0), ("ok", 0.2)), max_chars=20) == [[Word("ok", 0.2, 0.45)]]


def test_karaoke_durations_add_up_to_the_line_in_centiseconds():
    line = [Word("one", 1.004, 1.3), Word("two", 1.333, 1.6), Word("three", 1.667, 2.011)]
    text = subtitles.karaoke_text(line)
    assert text == "{\\k33}one {\\k33}two {\\k35}three"
    assert sum(int(k) for k in re.findall(r"\\k(\d+)", text)) == round((2.011 - 1.004) * 100)


def test_a_line_is_held_briefly_but_never_overlaps_the_next():
    line = [Word("a", 1.0, 1.2)]
    assert subtitles.line_end(line, next_start=None) == pytest.approx(1.2 + subtitles.HOLD_S)
    assert subtitles.line_end(line, next_start=1.3) == pytest.approx(1.3)


def test_ass_is_sized_in_output_pixels():
    words = words_at(("Hello", 0.0), ("world.", 0.4), ("Bye", 1.5))
    document = subtitles.build_ass(words, 1080, 1920, "DejaVu Sans")
    assert "PlayResX: 1080\nPlayResY: 1920" in document
    style = next(line for line in document.splitlines() if line.startswith("Style: Caption,"))
    fields = style.split(",")
    assert fields[1:3] == ["DejaVu Sans", "92"]  # 8.5 % of the short side
    assert fields[7] == "-1"  # bold
    assert fields[18:22] == ["2", "108", "108", "422"]  # bottom-centre, clear of the side rail and the bottom UI
    dialogues = [line for line in document.splitlines() if line.startswith("Dialogue:")]
    assert dialogues == [
        "Dialogue: 0,0:00:00.00,0:00:01.15,Caption,,0,0,0,,{\\k40}Hello {\\k25}world.",
        "Dialogue: 0,0:00:01.50,0:00:02.25,Caption,,0,0,0,,{\\k25}Bye",
    ]


def test_style_scales_with_the_frame():
    assert CaptionStyle.for_frame(1920, 1080).margin_bottom == round(0.08 * 1080)
    assert CaptionStyle.for_frame(1080, 1080).margin_bottom == round(0.12 * 1080)
    assert CaptionStyle.for_frame(216, 384).font_size == 18
    assert CaptionStyle.for_frame(1920, 1080).max_chars > CaptionStyle.for_frame(1080, 1920).max_chars


def test_override_characters_in_words_are_neutralised():
    line = [Word("{\\b1}bold\\N", 0.0, 0.5)]
    assert subtitles.karaoke_text(line) == "{\\k50}(/b1)bold/N"


def test_timestamps_roll_over_minutes_and_hours():
    document = subtitles.build_ass([Word("late", 3725.5, 3726.0)], 216, 384, "DejaVu Sans")
    assert ",1:02:05.50,1:02:06.50," in document


@pytest.mark.parametrize(
    ("word", "rule"),
    [(Word("x", -1.0, 0.5), "is not a time span"), (Word("x", 2.0, 1.0), "is not a time span")],
)
def test_bad_timings_are_refused(word, rule):
    with pytest.raises(InputError, match=rule):
        subtitles.validate_words([word])


def test_unordered_words_are_refused():
    with pytest.raises(InputError, match="sort words by start"):
        subtitles.validate_words([Word("b", 1.0, 1.2), Word("a", 0.5, 0.7)])


def test_the_bundled_font_is_dejavu_sans_from_matplotlib():
    font = subtitles.default_font_file()
    assert font.name == "DejaVuSans-Bold.ttf" and "matplotlib" in font.parts
    assert subtitles.font_family(font) == "DejaVu Sans"


def test_missing_font_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(subtitles.FontNotFoundError, match=r"gone\.ttf does not exist\. Fix: install matplotlib"):
        subtitles.font_family(tmp_path / "gone.ttf")


def test_a_file_that_is_not_a_font_is_refused(tmp_path):
    fake = tmp_path / "fake.ttf"
    fake.write_bytes(b"not a font")
    with pytest.raises(subtitles.FontNotFoundError, match="not a readable TrueType"):
        subtitles.font_family(fake)


def test_write_ass_returns_the_fonts_folder_for_libass(tmp_path):
    fonts = subtitles.write_ass([Word("hi", 0.0, 0.3)], 216, 384, tmp_path / "c.ass")
    assert fonts == subtitles.default_font_file().parent
    assert (tmp_path / "c.ass").read_text(encoding="utf-8").startswith("[Script Info]")
