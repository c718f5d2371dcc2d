"""Whisper word timings through a tiny checkpoint built at test time: the real loading and transcription path,
audio decoded without a system ffmpeg, heard words mapped onto the script, and a missing model that says how to
provide one. The tiny model only ever hears "beach", so the tests assert shapes and times, not what was heard."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from influencer_pipeline.errors import InputError, ModelNotAvailableError
from influencer_pipeline.voice import VoiceTrack, WhisperAligner, Word, split_words, word_timings
from influencer_pipeline.voice.whisper_words import align_to_script
from tests.voice.conftest import SCRIPT


@pytest.fixture(scope="module")
def aligner(tiny_whisper: Path) -> WhisperAligner:
    return WhisperAligner(str(tiny_whisper), device="cpu", sample_len=8)


def assert_in_order_within(words: list[Word], duration: float) -> None:
    clock = 0.0
    for word in words:
        assert isinstance(word, Word) and isinstance(word.start, float)
        assert clock <= word.start <= word.end <= duration + 1e-6
        clock = word.end


def test_transcribes_a_voice_track_into_timed_words(
    aligner: WhisperAligner, spoken: VoiceTrack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # whisper's own loader would need a system ffmpeg; ours does not

    words = aligner.words(spoken.path)

    assert words and {w.text for w in words} == {"beach"}
    assert_in_order_within(words, spoken.duration_s)


def test_with_the_script_the_words_are_the_scripts_words(aligner: WhisperAligner, spoken: VoiceTrack) -> None:
    api_like = VoiceTrack(spoken.path, spoken.duration_s, spoken.sample_rate, [], engine="api", voice="alloy")

    words, method = word_timings(api_like, SCRIPT, aligner)  # a track with no engine words goes to whisper

    assert method == "whisper" and [w.text for w in words] == SCRIPT.split()
    assert_in_order_within(words, spoken.duration_s)


def test_a_missing_file_says_how_to_provide_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError) as err:
        WhisperAligner(str(tmp_path / "small.pt"))
    message = str(err.value)
    assert "nothing is downloaded" in message and f"there is no file {tmp_path / 'small.pt'}" in message
    assert "whisper.load_model('small')" in message and "WHISPER_MODEL=/abs/path/small.pt" in message


def test_a_model_name_is_looked_up_in_the_cache_only(
    tiny_whisper: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHISPER_CACHE", str(tmp_path))
    with pytest.raises(
        ModelNotAvailableError, match=rf"{tmp_path / 'base.en.pt'} does not exist.*load_model\('base.en'\)"
    ):
        WhisperAligner("base.en")

    shutil.copy(tiny_whisper, tmp_path / "tiny.pt")  # a file named like the official one, of other dimensions
    found = WhisperAligner("tiny", device="cpu", sample_len=8)

    assert (found.checkpoint, found.official_name, found.name) == (tmp_path / "tiny.pt", "tiny", "whisper:tiny")
    assert found._model()[1] == "cpu"  # loads, keeping the default alignment heads (other dims), downloading nothing


def test_an_unknown_name_lists_the_model_names(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"not a model name \(tiny.en, tiny, base.en"):
        WhisperAligner("whisper-xxl")


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path: Path, spoken: VoiceTrack) -> None:
    broken = tmp_path / "small.pt"
    broken.write_bytes(b"not a checkpoint")
    aligner = WhisperAligner(str(broken), device="cpu")  # only the path is checked until the first use
    with pytest.raises(ModelNotAvailableError, match=r"small.pt is not a whisper checkpoint .*Fix:"):
        aligner.words(spoken.path)


def test_a_gpu_device_without_a_gpu_is_a_clear_error(tiny_whisper: Path, spoken: VoiceTrack) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA: the test asks for a GPU where there is none")
    with pytest.raises(InputError, match="asks for a GPU, but torch sees none here"):
        WhisperAligner(str(tiny_whisper), device="cuda").words(spoken.path)


def heard(*words: tuple[str, float, float]) -> list[Word]:
    return [Word(*word) for word in words]


def texts_and_times(words: list[Word]) -> list[tuple[str, float, float]]:
    return [(w.text, round(w.start, 3), round(w.end, 3)) for w in words]


def test_matched_words_take_the_heard_timing_with_the_scripts_spelling() -> None:
    words = align_to_script(heard((" hello", 0.1, 0.4), ("WORLD", 0.5, 0.9)), split_words("Hello, world!"), 1.0)
    assert texts_and_times(words) == [("Hello,", 0.1, 0.4), ("world!", 0.5, 0.9)]


def test_a_misheard_word_keeps_its_place() -> None:
    words = align_to_script(heard(("Eva", 0.0, 0.3), ("runs", 0.4, 0.8)), split_words("Ava runs"), 1.0)
    assert texts_and_times(words) == [("Ava", 0.0, 0.3), ("runs", 0.4, 0.8)]


def test_unheard_script_words_share_the_gap_between_their_heard_neighbours() -> None:
    """By length: "two" gets 3/8 of the gap, "three" 5/8."""
    words = align_to_script(heard(("one", 0.0, 0.2), ("four", 1.0, 1.2)), split_words("one two three four"), 1.5)
    assert texts_and_times(words) == [("one", 0.0, 0.2), ("two", 0.2, 0.5), ("three", 0.5, 1.0), ("four", 1.0, 1.2)]


def test_heard_words_that_are_not_in_the_script_are_dropped() -> None:
    words = align_to_script(heard(("one", 0.0, 0.2), ("um", 0.25, 0.3), ("two", 0.4, 0.6)), split_words("one two"), 1)
    assert texts_and_times(words) == [("one", 0.0, 0.2), ("two", 0.4, 0.6)]
