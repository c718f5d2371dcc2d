"""The OpenAI-compatible voice against a stand-in server: the wire contract, retries that honour Retry-After,
clear errors for every failure, and an API key that never shows up in an error, a traceback or a log line."""

from __future__ import annotations

import logging
import traceback
import wave
from pathlib import Path

import pytest

from influencer_pipeline.errors import InputError
from influencer_pipeline.voice import OpenAISpeechVoice, SpeechAPIError, script_timing, word_timings
from influencer_pipeline.voice.timing import decode_audio
from tests.voice.conftest import API_KEY, SCRIPT, rms
from tests.voice.speech_standin import GAP_S, WORD_S, SpeechStandin


def make_voice(standin: SpeechStandin, **overrides: object) -> OpenAISpeechVoice:
    settings: dict[str, object] = {"timeout_s": 5, "max_retries": 3, "backoff_s": 0.01, "api_key_env": "TTS_API_KEY"}
    settings.update(overrides)
    return OpenAISpeechVoice(standin.url, API_KEY, **settings)  # type: ignore[arg-type]


def failure_text(exc: BaseException) -> str:
    """Everything a person could see of an exception: its message and the whole chained traceback."""
    return "".join(traceback.format_exception(exc))


def test_speaks_through_the_documented_request(standin: SpeechStandin, tmp_path: Path) -> None:
    track = make_voice(standin, voice="nova").speak(SCRIPT, tmp_path / "vo.wav")

    [request] = standin.received
    assert request.path == "/v1/audio/speech"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.body == {"model": "tts-1", "input": SCRIPT, "voice": "nova", "response_format": "wav"}
    with wave.open(str(track.path), "rb") as wav:  # the streamed header was rewritten with real sizes
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        assert wav.getnframes() / 24_000 == pytest.approx(track.duration_s)
    words = len(SCRIPT.split())
    assert track.duration_s == pytest.approx(words * (WORD_S + GAP_S), abs=0.01)
    assert rms(decode_audio(track.path)) > 0.1
    assert (track.engine, track.voice, track.words, track.sample_rate) == ("openai-speech:tts-1", "nova", [], 24_000)


def test_the_speech_is_timed_from_the_script_over_its_voiced_parts(standin: SpeechStandin, tmp_path: Path) -> None:
    track = make_voice(standin).speak("one two three", tmp_path / "vo.wav")

    words, method = word_timings(track, "one two three", aligner=None)

    assert method == "script"
    assert [w.text for w in words] == ["one", "two", "three"]
    for index, word in enumerate(words):  # the stand-in says each word as a 0.25 s tone, then a 0.15 s gap
        tone_start = index * (WORD_S + GAP_S)
        assert tone_start - 0.02 <= word.start < word.end <= tone_start + WORD_S + 0.02
    assert words == script_timing("one two three", track.duration_s, track.path)


def test_a_local_server_without_a_key_gets_no_authorization_header(tmp_path: Path) -> None:
    with SpeechStandin(api_key=None) as open_server:
        OpenAISpeechVoice(open_server.url, None).speak("hello there", tmp_path / "vo.wav")
    assert "Authorization" not in open_server.received[0].headers


def test_429_waits_as_long_as_retry_after_says(
    standin: SpeechStandin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    standin.misbehave("429")
    waits: list[float] = []

    with caplog.at_level(logging.WARNING):
        track = make_voice(standin, sleep=waits.append).speak(SCRIPT, tmp_path / "vo.wav")

    assert waits == [1.0]  # the stand-in says Retry-After: 1 (the injected sleep records it, no clock is read)
    assert len(standin.received) == 2 and track.duration_s > 0
    assert "HTTP 429" in caplog.text and "retry 1 of 3 in 1.0 s" in caplog.text


def test_server_errors_and_dropped_connections_are_retried(standin: SpeechStandin, tmp_path: Path) -> None:
    standin.misbehave("500", "drop", "500")

    track = make_voice(standin).speak(SCRIPT, tmp_path / "vo.wav")

    assert len(standin.received) == 4 and track.duration_s > 0


def test_retries_run_out_with_a_clear_error(standin: SpeechStandin, tmp_path: Path) -> None:
    standin.misbehave("500", "500", "500")

    with pytest.raises(SpeechAPIError, match=r"failed 3 times, last with HTTP 500: The server had an error") as err:
        make_voice(standin, max_retries=2).speak(SCRIPT, tmp_path / "vo.wav")

    assert "Fix:" in str(err.value) and len(standin.received) == 3
    assert not (tmp_path / "vo.wav").exists()


def test_a_retry_after_longer_than_max_wait_fails_at_once(tmp_path: Path) -> None:
    with SpeechStandin(api_key=API_KEY, retry_after="3600") as standin:
        standin.misbehave("429")
        with pytest.raises(SpeechAPIError, match=r"asks to wait 3600 s, longer than max_wait_s=60"):
            make_voice(standin).speak(SCRIPT, tmp_path / "vo.wav")
    assert len(standin.received) == 1


def test_a_slow_server_times_out(tmp_path: Path) -> None:
    # The stand-in would answer (200) after a minute: only the client's own timeout can end this call with an error.
    with SpeechStandin(api_key=API_KEY, slow_s=60.0) as standin:
        standin.misbehave("slow", "slow")
        with pytest.raises(SpeechAPIError, match=r"failed 2 times, last with no complete answer within timeout_s=0.3"):
            make_voice(standin, timeout_s=0.3, max_retries=1).speak(SCRIPT, tmp_path / "vo.wav")
    assert len(standin.received) == 2


def test_a_rejected_key_names_the_env_var_and_is_not_retried(standin: SpeechStandin, tmp_path: Path) -> None:
    voice = OpenAISpeechVoice(standin.url, "sk-wrong-key-987654321", api_key_env="TTS_API_KEY", backoff_s=0.01)

    with pytest.raises(
        SpeechAPIError, match=r"refused the API key \(HTTP 401.*Fix: check the key in TTS_API_KEY"
    ) as err:
        voice.speak(SCRIPT, tmp_path / "vo.wav")

    assert len(standin.received) == 1
    assert "sk-wrong-key-987654321" not in failure_text(err.value)  # the server echoed it; we did not


def test_a_missing_key_says_to_set_it(standin: SpeechStandin, tmp_path: Path) -> None:
    with pytest.raises(SpeechAPIError, match=r"needs an API key .* Fix: set OPENAI_API_KEY"):
        OpenAISpeechVoice(standin.url, None).speak(SCRIPT, tmp_path / "vo.wav")


@pytest.mark.parametrize(
    "actions",
    [("401",), ("500", "500"), ("drop", "drop"), ("not-audio",), ("429", "slow")],
    ids=["401", "500", "drop", "not-audio", "429-then-timeout"],
)
def test_the_key_never_appears_in_errors_or_logs(
    standin: SpeechStandin, tmp_path: Path, caplog: pytest.LogCaptureFixture, actions: tuple[str, ...]
) -> None:
    standin.retry_after, standin.slow_s = "0", 1.0
    standin.misbehave(*actions)

    with caplog.at_level(logging.DEBUG), pytest.raises(SpeechAPIError) as err:
        make_voice(standin, max_retries=1, timeout_s=0.3).speak(SCRIPT, tmp_path / "vo.wav")

    assert API_KEY not in failure_text(err.value)
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(make_voice(standin))


def test_a_200_that_is_not_audio_is_a_clear_error(standin: SpeechStandin, tmp_path: Path) -> None:
    standin.misbehave("not-audio")
    with pytest.raises(SpeechAPIError, match=r"answered 200 but not with audio .* Fix: check base_url"):
        make_voice(standin).speak(SCRIPT, tmp_path / "vo.wav")


def test_a_request_the_server_rejects_names_model_and_voice(standin: SpeechStandin, tmp_path: Path) -> None:
    with pytest.raises(SpeechAPIError, match=r"HTTP 400: 'model' is a required property.*model ''"):
        make_voice(standin, model="").speak(SCRIPT, tmp_path / "vo.wav")
    assert len(standin.received) == 1


def test_bad_input_is_refused_before_any_request(standin: SpeechStandin, tmp_path: Path) -> None:
    voice = make_voice(standin)
    with pytest.raises(InputError, match="at most 4096 characters"):
        voice.speak("word " * 1000, tmp_path / "vo.wav")
    with pytest.raises(InputError, match="empty"):
        voice.speak("  ", tmp_path / "vo.wav")
    with pytest.raises(InputError, match="not an http"):
        OpenAISpeechVoice("api.openai.com/v1", API_KEY)
    assert standin.received == []


def test_an_unwritable_output_is_a_clear_error(standin: SpeechStandin, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(InputError, match=r"not-a-folder/vo.wav: cannot write the voice track there"):
        make_voice(standin).speak(SCRIPT, blocker / "vo.wav")


def test_audio_in_another_format_is_rewritten_as_wav(standin: SpeechStandin, tmp_path: Path) -> None:
    """Servers that ignore response_format (mp3 is the API's default) still give the pipeline a plain WAV."""
    standin.misbehave("flac")

    track = make_voice(standin).speak(SCRIPT, tmp_path / "vo.wav")

    with wave.open(str(track.path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
    assert track.duration_s == pytest.approx(len(SCRIPT.split()) * (WORD_S + GAP_S), abs=0.01)
