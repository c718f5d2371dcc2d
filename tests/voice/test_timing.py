"""Script timing (words spread over the speech found in the waveform), and the choice of timing source."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from influencer_pipeline.errors import InputError
from influencer_pipeline.voice import EspeakVoice, VoiceTrack, Word, script_timing, split_words, word_timings
from influencer_pipeline.voice.timing import atomic_output, lay_out, voiced_segments

RATE = 16_000


def tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * 200 * np.arange(int(seconds * RATE)) / RATE)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE))


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


def assert_in_order(words: list[Word], duration: float) -> None:
    clock = 0.0
    for word in words:
        assert clock <= word.start <= word.end <= duration
        clock = word.end


def test_words_are_whitespace_tokens_with_their_punctuation() -> None:
    tokens = split_words("  Hello, world!\nIt's 7 a.m. ")
    assert [t.text for t in tokens] == ["Hello,", "world!", "It's", "7", "a.m."]
    assert [(t.start, t.end) for t in tokens[:2]] == [(2, 8), (9, 15)]


def test_without_audio_words_share_the_duration_by_length_with_pauses_at_punctuation() -> None:
    words = script_timing("Hi, wonderful people.", 3.0)

    assert [w.text for w in words] == ["Hi,", "wonderful", "people."]
    assert_in_order(words, 3.0)
    assert words[0].start == 0.0 and words[-1].end == pytest.approx(3.0)
    durations = [w.end - w.start for w in words]
    assert durations[1] == pytest.approx(durations[0] * 9 / 2)  # nine letters against two
    assert words[1].start - words[0].end > 0  # the comma's pause
    assert words[2].start == pytest.approx(words[1].end)  # no pause between plain words


def test_with_audio_words_land_in_the_voiced_regions(tmp_path: Path) -> None:
    """Tone, silence, tone: the first half of the script goes in the first tone, the rest in the second."""
    audio = write_wav(tmp_path / "vo.wav", np.concatenate([tone(0.8), silence(0.6), tone(0.6), silence(0.2)]))

    words = script_timing("alpha beta gamma", 2.2, audio)

    assert [w.text for w in words] == ["alpha", "beta", "gamma"]
    assert_in_order(words, 2.2)
    first, second, third = words
    assert first.start == pytest.approx(0.0, abs=0.02) and second.end == pytest.approx(0.8, abs=0.02)
    assert third.start == pytest.approx(1.4, abs=0.02) and third.end == pytest.approx(2.0, abs=0.02)


def test_on_real_speech_script_timing_stays_close_to_the_engines_own(tmp_path: Path) -> None:
    """espeak's word events are the ground truth; a weight-only spread misplaces words next to pauses by ~0.5 s."""
    script = "Ava loves sunny mornings at the beach. Do you? I always bring coffee, a towel, and 2 good books. See you!"
    spoken = EspeakVoice().speak(script, tmp_path / "vo.wav")

    words = script_timing(script, spoken.duration_s, spoken.path)

    errors = np.abs(np.array([w.start for w in words]) - [w.start for w in spoken.words])
    assert errors.mean() < 0.08 and errors.max() < 0.2


def test_short_stops_inside_speech_are_not_pauses_but_real_pauses_are() -> None:
    samples = np.concatenate([tone(0.3), silence(0.05), tone(0.3), silence(0.4), tone(0.3), tone(0.005, 0.9)])
    segments = voiced_segments(samples, RATE)
    assert [(round(a, 2), round(b, 2)) for a, b in segments] == [(0.0, 0.65), (1.05, 1.35)]


def test_a_silent_track_falls_back_to_the_whole_duration(tmp_path: Path) -> None:
    audio = write_wav(tmp_path / "quiet.wav", silence(1.0))
    assert script_timing("one two", 1.0, audio) == script_timing("one two", 1.0)


def test_bad_input_gives_clear_errors(tmp_path: Path) -> None:
    assert script_timing("   ", 1.0) == []
    with pytest.raises(InputError, match="must last more than 0 s"):
        script_timing("hello", 0.0)
    with pytest.raises(InputError, match="does not exist"):
        script_timing("hello", 1.0, tmp_path / "missing.wav")
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    with pytest.raises(InputError, match="ffmpeg could not decode it"):
        script_timing("hello", 1.0, tmp_path / "broken.wav")


def test_lay_out_keeps_every_token_inside_the_span() -> None:
    words = lay_out(split_words("a bb. ccc"), 1.0, 2.0)
    assert words[0].start == 1.0 and words[-1].end == pytest.approx(2.0)
    assert_in_order(words, 2.0)


class RecordingAligner:
    """Stands in for `WhisperAligner`, recording how it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, str | None, str | None]] = []

    def words(self, audio: Path, script: str | None = None, language: str | None = None) -> list[Word]:
        self.calls.append((audio, script, language))
        return [Word("whispered", 0.1, 0.2)]


def track(tmp_path: Path, words: list[Word]) -> VoiceTrack:
    audio = write_wav(tmp_path / "vo.wav", np.concatenate([tone(0.5), silence(0.2), tone(0.5)]))
    return VoiceTrack(audio, 1.2, RATE, words, engine="test", voice="v", language="en")


def test_engine_words_win_when_they_are_the_scripts_words(tmp_path: Path) -> None:
    engine_words = [Word("Good", 0.0, 0.5), Word("morning.", 0.7, 1.2)]
    aligner = RecordingAligner()

    assert word_timings(track(tmp_path, engine_words), "Good morning.", aligner) == (engine_words, "engine")  # type: ignore[arg-type]
    assert aligner.calls == []


def test_whisper_is_next_and_gets_the_script_and_the_voices_language(tmp_path: Path) -> None:
    aligner = RecordingAligner()
    spoken = track(tmp_path, [Word("Other", 0.0, 1.0)])  # engine words for another text do not count

    words, method = word_timings(spoken, "Good morning.", aligner)  # type: ignore[arg-type]

    assert (words, method) == ([Word("whispered", 0.1, 0.2)], "whisper")
    assert aligner.calls == [(spoken.path, "Good morning.", "en")]


def test_the_script_is_the_last_resort(tmp_path: Path) -> None:
    words, method = word_timings(track(tmp_path, []), "Good morning.", None)

    assert method == "script"
    assert words[0].end <= 0.52 and words[1].start >= 0.68  # one word per tone


def test_an_unwritable_output_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="cannot write the voice track there"), atomic_output(blocker / "vo.wav"):
        pass

    with pytest.raises(RuntimeError), atomic_output(tmp_path / "vo.wav") as partial:
        partial.write_bytes(b"half a track")
        raise RuntimeError("crashed while writing")
    assert list(tmp_path.iterdir()) == [blocker]
