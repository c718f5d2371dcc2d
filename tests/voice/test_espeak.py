"""The embedded espeak-ng voice: real speech in a real WAV, word timings from the engine that match the audio,
rate and voice settings that take effect, clear errors, and one global library that is safe across threads."""

from __future__ import annotations

import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from influencer_pipeline.errors import InputError
from influencer_pipeline.voice import EspeakVoice, VoiceTrack, VoiceUnavailableError, list_voices, word_timings
from influencer_pipeline.voice import espeak as espeak_module
from influencer_pipeline.voice.timing import decode_audio, voiced_segments
from tests.voice.conftest import SCRIPT, rms


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768, wav.getframerate()


def test_speaks_a_sentence_into_an_audible_wav(spoken: VoiceTrack) -> None:
    samples, rate = read_wav(spoken.path)

    assert rate == spoken.sample_rate == 22_050
    assert spoken.duration_s == pytest.approx(len(samples) / rate) and 2.0 < spoken.duration_s < 5.0
    assert rms(samples) > 0.02
    assert (spoken.engine, spoken.voice, spoken.language) == ("espeak-ng", "en-us", "en")


def test_engine_words_are_the_scripts_words_in_order_inside_the_track(spoken: VoiceTrack) -> None:
    assert [w.text for w in spoken.words] == SCRIPT.split()
    clock = 0.0
    for word in spoken.words:
        assert clock <= word.start < word.end <= spoken.duration_s
        clock = word.end
    assert spoken.words[0].start < 0.1 and spoken.words[-1].end > spoken.duration_s - 0.1
    assert word_timings(spoken, SCRIPT, aligner=None) == (spoken.words, "engine")


def test_engine_words_sit_on_the_speech_and_leave_the_pauses_free(tmp_path: Path) -> None:
    track = EspeakVoice().speak("One. Two. Three.", tmp_path / "vo.wav")
    segments = voiced_segments(decode_audio(track.path), 16_000)

    assert len(segments) == 3  # three sentences with pauses between them
    for word, (start, end) in zip(track.words, segments, strict=True):
        assert word.start == pytest.approx(start, abs=0.03) and word.end == pytest.approx(end, abs=0.03)


def test_a_faster_rate_gives_a_shorter_track(tmp_path: Path) -> None:
    slow = EspeakVoice(words_per_minute=120).speak(SCRIPT, tmp_path / "slow.wav")
    fast = EspeakVoice(words_per_minute=260).speak(SCRIPT, tmp_path / "fast.wav")

    assert fast.duration_s < 0.7 * slow.duration_s
    assert fast.words[-1].start < slow.words[-1].start


def test_the_voice_can_be_chosen_per_call(tmp_path: Path) -> None:
    voice = EspeakVoice()
    american = voice.speak(SCRIPT, tmp_path / "us.wav")
    french = voice.speak(SCRIPT, tmp_path / "fr.wav", voice="fr")

    assert (french.voice, french.language) == ("fr", "fr")
    assert read_wav(french.path)[0].shape != read_wav(american.path)[0].shape


def test_an_unknown_voice_says_how_to_list_voices(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no voice 'en-uss'.*close matches: en-us.*list_voices") as err:
        EspeakVoice(voice="en-uss").speak(SCRIPT, tmp_path / "vo.wav")
    assert not (tmp_path / "vo.wav").exists()
    assert err.value.where == "voice"
    assert ("en-us", "English (America)") in list_voices()


def test_settings_outside_the_engines_range_are_refused() -> None:
    with pytest.raises(InputError, match="80-450 words a minute"):
        EspeakVoice(words_per_minute=30)
    with pytest.raises(InputError, match="pitch: must be 0-100"):
        EspeakVoice(pitch=120)


def test_emoji_and_markdown_marks_are_not_read_aloud(tmp_path: Path) -> None:
    plain = EspeakVoice().speak("Hello world", tmp_path / "plain.wav")
    marked = EspeakVoice().speak("Hello 👋 *world* #", tmp_path / "marked.wav")

    assert marked.duration_s == pytest.approx(plain.duration_s, abs=0.05)
    assert [w.text for w in marked.words] == ["Hello", "👋", "*world*", "#"]


def test_a_script_with_nothing_to_say_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing to say aloud"):
        EspeakVoice().speak(" 👋 🎉 ", tmp_path / "vo.wav")


def test_concurrent_calls_each_get_their_own_speech(tmp_path: Path) -> None:
    """The library is one global state machine: without the lock, threads would get each other's audio and words.
    (Not byte-identical: espeak-ng's pitch flutter runs on across calls, moving lengths by about 10 ms.)"""
    scripts = ["Hello there.", SCRIPT, f"{SCRIPT} {SCRIPT}", "One, two, three, four, five, six, seven."]
    voices = [EspeakVoice(words_per_minute=rate) for rate in (130, 170, 210, 250)]

    def speak(n: int, label: str) -> VoiceTrack:
        return voices[n].speak(scripts[n], tmp_path / f"{label}-{n}.wav")

    alone = [speak(n, "alone") for n in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(speak, range(4), ["together"] * 4))

    for text, one, other in zip(scripts, alone, together, strict=True):
        assert [w.text for w in other.words] == text.split()
        assert other.duration_s == pytest.approx(one.duration_s, abs=0.05)
        assert [w.start for w in other.words] == pytest.approx([w.start for w in one.words], abs=0.05)


def test_a_missing_library_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import espeakng_loader

    monkeypatch.setattr(espeak_module, "_ENGINE", None)  # as in a fresh process
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(tmp_path / "libespeak-ng.so"))

    with pytest.raises(VoiceUnavailableError, match=r"cannot load espeak-ng .* pip install espeakng-loader"):
        EspeakVoice().speak(SCRIPT, tmp_path / "vo.wav")
