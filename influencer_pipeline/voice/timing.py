"""Words in time: the voice package's shared vocabulary, and the fallback that times a known script.

Subtitles need every word of the voice-over with where it is heard. The best source is the speech engine itself
(espeak-ng reports where each word starts), then whisper's word timestamps, and when neither exists the script:
its words spread over the stretches of the track where there is speech, weighted by how long each takes to say.
The script is always known (the pipeline wrote it), so subtitles always show its exact text, one `Word` per
whitespace-separated token; only the timing source changes, and `word_timings` says which one it used.

Audio is decoded with the ffmpeg binary that imageio-ffmpeg ships, so nothing here needs a system package.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import imageio_ffmpeg
import numpy as np

from influencer_pipeline.errors import InputError

if TYPE_CHECKING:
    from influencer_pipeline.voice.whisper_words import WhisperAligner

ANALYSIS_RATE = 16_000  # Hz: plenty for telling speech from silence, and what whisper wants anyway
FRAME_S = 0.01  # energy is measured per 10 ms frame
VOICE_FLOOR_DB = -35.0  # a frame is voiced when within this many dB of the loudest frame
SILENT_RMS = 1e-4  # a track whose loudest frame is below this (-80 dBFS) has no speech at all
MIN_GAP_S = 0.12  # quieter stretches shorter than this are stops inside speech, not pauses
MIN_VOICE_S = 0.04  # louder stretches shorter than this are clicks, not speech
CLAUSE_PAUSE = 2.0  # letter units of pause after , ; : (speakers pause there)
SENTENCE_PAUSE = 4.0  # letter units of pause after . ! ?
DIGIT_WEIGHT = 3.0  # a digit is read as a whole word ("7" -> "seven")
UNUSED_SPEECH_COST = 4.0  # per second of speech given no words (script timing's split search, `_assign_runs`)
MID_PHRASE_COST = 0.7  # for a pause the script has no punctuation for (as costly as a run 2.3x off its length)


@dataclass(frozen=True)
class Word:
    """One script word and where it is heard, in seconds from the start of the voice track."""

    text: str
    start: float
    end: float


@dataclass
class VoiceTrack:
    """A spoken script on disk. `words` are the engine's own timings, empty when the engine reports none;
    `language` is the voice's language code when the engine knows it, a hint for whisper."""

    path: Path
    duration_s: float
    sample_rate: int
    words: list[Word]
    engine: str
    voice: str
    language: str | None = None


class Voice(Protocol):
    """Speaks a script into a WAV file; `name` is recorded in metadata as the engine that produced the track."""

    name: str

    def speak(self, text: str, output: Path, voice: str | None = None) -> VoiceTrack: ...


class Token(NamedTuple):
    """A whitespace-separated piece of the script and its character span (engines report character positions)."""

    text: str
    start: int
    end: int


def split_words(text: str) -> list[Token]:
    """The script's words as subtitles show them: split on whitespace only, punctuation kept attached."""
    tokens: list[Token] = []
    position = 0
    for piece in text.split():
        start = text.index(piece, position)
        position = start + len(piece)
        tokens.append(Token(piece, start, position))
    return tokens


def spoken_weight(token: str) -> float:
    """Roughly how long a word takes to say, in letters; any token takes at least one letter's time."""
    letters = sum(ch.isalpha() for ch in token)
    digits = sum(ch.isdigit() for ch in token)
    return max(letters + DIGIT_WEIGHT * digits, 1.0)


def pause_after(token: str) -> float:
    """The pause a speaker leaves after a word, in letters: clause and sentence punctuation make one."""
    stripped = token.rstrip("\"')]}»”’")
    if stripped.endswith((".", "!", "?", "…")):
        return SENTENCE_PAUSE
    if stripped.endswith((",", ";", ":", "—", "–")):
        return CLAUSE_PAUSE
    return 0.0


def lay_out(tokens: list[Token], start: float, end: float) -> list[Word]:
    """Spread `tokens` over [start, end] in order, each taking time in proportion to its spoken weight, with the
    punctuation pauses between them (none after the last: the span ends where the speech ends)."""
    if not tokens:
        return []
    weights = [spoken_weight(t.text) for t in tokens]
    pauses = [pause_after(t.text) for t in tokens[:-1]] + [0.0]
    seconds_per_unit = max(end - start, 0.0) / (sum(weights) + sum(pauses))
    words: list[Word] = []
    clock = start
    for token, weight, pause in zip(tokens, weights, pauses, strict=True):
        word_end = clock + weight * seconds_per_unit
        words.append(Word(token.text, clock, word_end))
        clock = word_end + pause * seconds_per_unit
    return words


def decode_audio(path: Path, sample_rate: int = ANALYSIS_RATE) -> np.ndarray:
    """Any audio file as mono float32 samples in [-1, 1] at `sample_rate`, decoded by imageio-ffmpeg's binary."""
    source = Path(path)
    if not source.is_file():
        raise InputError(str(source), "the audio file does not exist", "check the path of the voice track")
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(source)]
    command += ["-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", str(sample_rate), "-"]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise InputError(str(source), f"ffmpeg could not decode it ({reason[0]})", "check it is a complete audio file")
    return np.frombuffer(result.stdout, dtype="<i2").astype(np.float32) / 32768.0


def frame_length(sample_rate: int) -> int:
    """Samples per energy frame: the whole number closest to 10 ms at this rate."""
    return max(round(sample_rate * FRAME_S), 1)


def voiced_frames(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per frame (`frame_length` samples), whether it holds speech: loud relative to the loudest frame, not silence."""
    frame = frame_length(sample_rate)
    count = len(samples) // frame
    if count == 0:
        return np.zeros(0, dtype=bool)
    frames = np.asarray(samples[: count * frame], dtype=np.float64).reshape(count, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    peak = float(rms.max())
    if peak < SILENT_RMS:
        return np.zeros(count, dtype=bool)
    return rms > peak * 10 ** (VOICE_FLOOR_DB / 20)


def voiced_segments(samples: np.ndarray, sample_rate: int) -> list[tuple[float, float]]:
    """The stretches of speech, in seconds: voiced frames joined across short stops, with clicks dropped."""
    frame_s = frame_length(sample_rate) / sample_rate
    joined: list[list[int]] = []
    for start, end in _runs(voiced_frames(samples, sample_rate)):
        if joined and (start - joined[-1][1]) * frame_s < MIN_GAP_S:
            joined[-1][1] = end
        else:
            joined.append([start, end])
    return [(start * frame_s, end * frame_s) for start, end in joined if (end - start) * frame_s >= MIN_VOICE_S]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs in `mask`."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def spread_over_speech(tokens: list[Token], samples: np.ndarray, sample_rate: int, duration_s: float) -> list[Word]:
    """Give each stretch of speech a run of consecutive words (`_assign_runs`), then spread each run over its
    stretch by weight; the silences between stretches stay word-free."""
    segments = voiced_segments(samples, sample_rate)
    if not segments:
        return lay_out(tokens, 0.0, duration_s)
    words: list[Word] = []
    for (start, end), (first, last) in zip(segments, _assign_runs(tokens, segments), strict=True):
        words += lay_out(tokens[first:last], start, end)
    return clamp_in_order(words, duration_s)


def _assign_runs(tokens: list[Token], segments: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """For each stretch of speech, the [first, last) run of tokens it says, at the least total cost over all splits
    (dynamic programming). A run costs the squared log ratio of the stretch's length to the run's expected length
    (its weight at the track's average pace), plus a penalty when it ends without punctuation, because speakers
    pause at commas and full stops; a stretch left without words (a breath, a click) costs in proportion to its
    length. On espeak tracks this puts word starts within 30-70 ms of the engine's own on average, where spreading
    by weight alone is off by up to half a second whenever one word lands on the wrong side of a pause."""
    lengths = [end - start for start, end in segments]
    weights = np.concatenate(([0.0], np.cumsum([spoken_weight(t.text) for t in tokens])))
    pace = sum(lengths) / weights[-1]  # seconds per unit of weight
    count = len(tokens)
    ends_mid_phrase = np.array([False] + [pause_after(t.text) == 0 for t in tokens[:-1]] + [False])
    cost = np.full((len(segments) + 1, count + 1), np.inf)
    cost[0, 0] = 0.0
    run_start = np.zeros((len(segments) + 1, count + 1), dtype=int)
    for k, length in enumerate(lengths):
        cost[k + 1] = cost[k] + UNUSED_SPEECH_COST * length  # this stretch says nothing
        run_start[k + 1] = np.arange(count + 1)
        for first in np.flatnonzero(np.isfinite(cost[k])):
            lasts = np.arange(first + 1, count + 1)
            expected = pace * (weights[lasts] - weights[first])
            total = cost[k, first] + np.log(length / expected) ** 2 + MID_PHRASE_COST * ends_mid_phrase[lasts]
            better = total < cost[k + 1, lasts]
            cost[k + 1, lasts[better]] = total[better]
            run_start[k + 1, lasts[better]] = first
    runs: list[tuple[int, int]] = []
    last = count
    for k in range(len(segments), 0, -1):
        first = int(run_start[k, last])
        runs.append((first, last))
        last = first
    return runs[::-1]


def clamp_in_order(words: list[Word], duration_s: float) -> list[Word]:
    """Times inside [0, duration] and in order (each word starts no earlier than the previous one ends), so a
    subtitle renderer never sees overlapping or backwards cues whatever the timing source produced."""
    clamped: list[Word] = []
    clock = 0.0
    for word in words:
        start = min(max(word.start, clock), duration_s)
        end = min(max(word.end, start), duration_s)
        clamped.append(Word(word.text, start, end))
        clock = end
    return clamped


def script_timing(text: str, duration_s: float, audio: Path | None = None) -> list[Word]:
    """The script's words timed from the script alone: over the speech found in `audio` when given, otherwise
    in proportion to their length over the whole duration. Used when neither the engine nor whisper can time them."""
    if duration_s <= 0:
        raise InputError("duration_s", f"a voice track must last more than 0 s, got {duration_s}", "re-render it")
    tokens = split_words(text)
    if not tokens:
        return []
    if audio is None:
        return lay_out(tokens, 0.0, duration_s)
    return spread_over_speech(tokens, decode_audio(audio), ANALYSIS_RATE, duration_s)


def word_timings(track: VoiceTrack, script: str, aligner: WhisperAligner | None) -> tuple[list[Word], str]:
    """The script's word timings from the best source at hand, and which one it was ("engine", "whisper" or
    "script") so metadata can say how the subtitles were timed. Engine words count only if they are exactly
    the script's words (the track may have been spoken from another text)."""
    script_words = [t.text for t in split_words(script)]
    if track.words and [w.text for w in track.words] == script_words:
        return list(track.words), "engine"
    if aligner is not None:
        return aligner.words(track.path, script=script, language=track.language), "whisper"
    return script_timing(script, track.duration_s, track.path), "script"


@contextmanager
def atomic_output(output: Path) -> Iterator[Path]:
    """A temporary sibling to write instead of `output`, moved over it only when the block succeeds, so a crash
    never leaves half a track where a finished one is expected. An unwritable place becomes an error with a fix."""
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        partial.replace(target)
    except OSError as exc:
        raise InputError(
            str(target), f"cannot write the voice track there ({exc.strerror or exc})", "use a writable folder"
        ) from exc
    finally:
        with suppress(OSError):
            partial.unlink(missing_ok=True)
