"""Word-timed captions as an ASS file, styled for vertical social video and burned in by libass.

Why ASS written here rather than SRT: with `PlayResX`/`PlayResY` equal to the output size, font sizes and margins
are in output pixels (SRT + `force_style` sizes are in a 384x288 script space, so "24" renders 160 px tall on
1080x1920), and karaoke `\\k` tags highlight each word as it is spoken: a word is drawn in the secondary colour
(white) until its start time, then in the primary colour (yellow).

Style: bold DejaVu Sans with a thick black outline (readable on any picture), a few words per line (short lines
are what viewers read at a glance on a phone), bottom-centre above the platforms' UI overlays: on a 9:16 reel
Instagram/TikTok/Shorts cover roughly the bottom fifth with the caption and buttons and the right edge with the
action rail, so the margins keep text out of those zones.

The font comes from matplotlib's `mpl-data/fonts/ttf` (a dependency that ships DejaVu Sans), handed to libass with
`fontsdir`: no system fonts are needed, and every machine renders the same glyphs. The family name is read from
the font file itself, so the style always names the font libass was given and never falls back silently to
whatever fontconfig finds.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFont

from influencer_pipeline.errors import InputError
from influencer_pipeline.voice.timing import Word  # one word type for voice timing and captions

MAX_WORDS_PER_LINE = 3
MAX_GAP_S = 0.6  # a longer pause in the speech starts a new line
HOLD_S = 0.5  # a line stays up this long after its last word unless the next line starts sooner
FONT_FILE_NAME = "DejaVuSans-Bold.ttf"
SENTENCE_END = (".", "!", "?", ";", ":", ",", "…")


class FontNotFoundError(RuntimeError):
    """The caption font file is missing or unreadable: the message names the file and the fix."""


@dataclass(frozen=True)
class CaptionStyle:
    """Sizes in output pixels, derived from the frame so 9:16, 1:1 and 16:9 all look alike."""

    font_size: int
    outline: int
    shadow: int
    margin_side: int
    margin_bottom: int
    max_chars: int

    @classmethod
    def for_frame(cls, width: int, height: int) -> CaptionStyle:
        font_size = max(8, round(0.085 * min(width, height)))
        bottom = 0.22 if height > width else 0.12 if height == width else 0.08
        margin_side = round(0.1 * width)
        return cls(
            font_size=font_size,
            outline=max(1, round(font_size * 0.08)),
            shadow=max(1, round(font_size * 0.04)),
            margin_side=margin_side,
            margin_bottom=round(bottom * height),
            max_chars=max(8, int((width - 2 * margin_side) / (0.62 * font_size))),
        )


def default_font_file() -> Path:
    """DejaVu Sans Bold inside the installed matplotlib (found without importing matplotlib, which is slow)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return Path("<matplotlib is not installed>") / FONT_FILE_NAME
    return Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / FONT_FILE_NAME


def font_family(font_file: Path) -> str:
    """The family name stored in the font file ("DejaVu Sans"); FontNotFoundError names the fix."""
    if not font_file.is_file():
        raise FontNotFoundError(
            f"caption font {font_file} does not exist. Fix: install matplotlib, which ships DejaVu Sans "
            f"(pip install 'matplotlib~=3.11', or --force-reinstall it if its mpl-data folder was pruned), "
            f"or pass another .ttf file as font_file"
        )
    try:
        return ImageFont.truetype(str(font_file), 10).getname()[0]
    except OSError as error:
        raise FontNotFoundError(
            f"caption font {font_file} is not a readable TrueType/OpenType font ({error}). "
            f"Fix: reinstall matplotlib or pass another .ttf file"
        ) from error


def validate_words(words: Sequence[Word]) -> None:
    """Timings must be non-negative, ordered and non-inverted: libass would draw garbage silently."""
    previous = 0.0
    for index, word in enumerate(words):
        where = f"words[{index}] ({word.text!r})"
        if word.start < 0 or word.end < word.start:
            raise InputError(where, f"start {word.start} / end {word.end} s is not a time span", "fix the timing")
        if word.start < previous:
            raise InputError(where, f"starts at {word.start} s, before the previous word", "sort words by start")
        previous = word.start


def group_lines(words: Sequence[Word], max_chars: int, max_words: int = MAX_WORDS_PER_LINE) -> list[list[Word]]:
    """A few words per line; a new line after punctuation, after a pause, or when the line would get too long."""
    lines: list[list[Word]] = []
    for word in words:
        if not word.text.strip():
            continue
        line = lines[-1] if lines else None
        if line is None or _starts_new_line(line, word, max_chars, max_words):
            lines.append([word])
        else:
            line.append(word)
    return lines


def _starts_new_line(line: list[Word], word: Word, max_chars: int, max_words: int) -> bool:
    last = line[-1]
    length = sum(len(w.text.strip()) + 1 for w in line) + len(word.text.strip())
    return (
        len(line) >= max_words
        or length > max_chars
        or word.start - last.end > MAX_GAP_S
        or last.text.strip().endswith(SENTENCE_END)
    )


def build_ass(words: Sequence[Word], width: int, height: int, family: str) -> str:
    """The whole ASS document: one Dialogue line per caption line, karaoke `\\k` per word."""
    style = CaptionStyle.for_frame(width, height)
    lines = group_lines(words, style.max_chars)
    events = []
    for index, line in enumerate(lines):
        next_start = lines[index + 1][0].start if index + 1 < len(lines) else None
        start, end = line[0].start, line_end(line, next_start)
        events.append(f"Dialogue: 0,{_timestamp(start)},{_timestamp(end)},Caption,,0,0,0,,{karaoke_text(line)}")
    return "\n".join([*_header(width, height, family, style), *events, ""])


def line_end(line: list[Word], next_start: float | None) -> float:
    """Hold a line briefly after its last word, but never past the next line (no overlap, no blink)."""
    end = line[-1].end + HOLD_S
    if next_start is not None:
        end = min(end, next_start)
    return max(end, line[0].start + 0.05)


def karaoke_text(line: list[Word]) -> str:
    """`{\\kNN}word` per word, NN in centiseconds from this word's start to the next word's start (the last word
    runs to its end). Rounded cumulatively, so the highlight never drifts from the voice over a long line."""
    origin = line[0].start
    marks = [round((w.start - origin) * 100) for w in line] + [round((line[-1].end - origin) * 100)]
    parts = [f"{{\\k{max(marks[i + 1] - marks[i], 0)}}}{_ass_escape(w.text.strip())}" for i, w in enumerate(line)]
    return " ".join(parts)


def _ass_escape(text: str) -> str:
    """Braces open override blocks and backslashes start tags in ASS; spoken text needs neither."""
    return text.replace("\\", "/").replace("{", "(").replace("}", ")").replace("\n", " ")


def _timestamp(seconds: float) -> str:
    centis = round(max(seconds, 0.0) * 100)
    hours, rest = divmod(centis, 360000)
    minutes, rest = divmod(rest, 6000)
    return f"{hours}:{minutes:02d}:{rest // 100:02d}.{rest % 100:02d}"


def _header(width: int, height: int, family: str, style: CaptionStyle) -> list[str]:
    # Colours are &HAABBGGRR: primary (spoken) yellow, secondary (not yet spoken) white, black outline,
    # half-transparent black shadow. Bold=-1 is "true". Alignment 2 is bottom-centre.
    return [
        "[Script Info]",
        "ScriptType: v4.00+",
        f"PlayResX: {width}",
        f"PlayResY: {height}",
        "ScaledBorderAndShadow: yes",
        "WrapStyle: 0",
        "",
        "[V4+ Styles]",
        "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, "
        "Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, "
        "MarginR, MarginV, Encoding",
        f"Style: Caption,{family},{style.font_size},&H0000E6FF,&H00FFFFFF,&H00000000,&H80000000,-1,0,0,0,100,100,0,"
        f"0,1,{style.outline},{style.shadow},2,{style.margin_side},{style.margin_side},{style.margin_bottom},1",
        "",
        "[Events]",
        "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text",
    ]


def write_ass(words: Sequence[Word], width: int, height: int, path: Path, font_file: Path | None = None) -> Path:
    """Write the captions to `path` and return the fonts folder to give libass as `fontsdir`."""
    font_file = font_file or default_font_file()
    validate_words(words)
    path.write_text(build_ass(words, width, height, font_family(font_file)), encoding="utf-8")
    return font_file.parent
