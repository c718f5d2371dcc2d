"""Fixtures for voice tests: a tiny random whisper checkpoint, a spoken sample, the speech API stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from influencer_pipeline.voice import EspeakVoice, VoiceTrack
from tests.voice.speech_standin import SpeechStandin

SCRIPT = "Ava loves sunny mornings at the beach. Do you?"
API_KEY = "sk-test-0123456789abcdefSECRET"


def build_tiny_whisper(path: Path) -> Path:
    """A tiny Whisper (real architecture, random weights, 3.6 M parameters, multilingual vocabulary) saved the way
    official checkpoints are ({"dims", "model_state_dict"}), so `load_model(path)` loads it like them.

    Two things are not left to chance. Whisper creates the decoder's positional embedding with `torch.empty` (a
    checkpoint fills it), so it is initialised here: left alone it is whatever was in memory, sometimes NaN, and
    the model then decodes "!!!!". And the decoder's final layer norm is pinned to the embedding of " beach", so
    the model hears "beach" at every step whatever the audio: fully random weights hear nothing for one input and
    dozens of words for the next (espeak's audio differs slightly between calls), making tests flaky and slow.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper
    from whisper.tokenizer import get_tokenizer

    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,  # 30 s = 3000 mel frames, halved by the conv stem
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=2,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=2,
    )
    torch.manual_seed(1)
    model = Whisper(dims)
    [beach] = get_tokenizer(multilingual=True, num_languages=99).encode(" beach")
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(std=0.01)  # Whisper leaves it torch.empty (garbage, even NaN)
        model.decoder.ln.weight.zero_()
        model.decoder.ln.bias.copy_(model.decoder.token_embedding.weight[beach])
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Also pins torch to one thread: a tiny model gains nothing from more, and loses a lot on a busy CI box."""
    import torch

    torch.set_num_threads(1)
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-random.pt")


@pytest.fixture(scope="session")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> VoiceTrack:
    """`SCRIPT` spoken by the embedded voice, shared by the tests that only read it."""
    return EspeakVoice().speak(SCRIPT, tmp_path_factory.mktemp("spoken") / "script.wav")


@pytest.fixture
def standin() -> Iterator[SpeechStandin]:
    with SpeechStandin(api_key=API_KEY) as server:
        yield server


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
