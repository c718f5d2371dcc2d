"""Word timings from openai-whisper, offline.

Whisper hears where each word is, even in a track whose engine reports no timings (an API voice). The script is
known, so the words it heard are mapped back onto the script's words: subtitles show what was written, at the
time it was heard. Nothing is downloaded: the model is a local checkpoint file, or an official model name whose
file is already in whisper's cache. Audio is decoded with imageio-ffmpeg's binary and handed to whisper as an
array, because whisper's own loader shells out to a system `ffmpeg` that may not exist. torch and whisper are
imported only when an aligner is made, so code that never transcribes never pays for them.
"""

from __future__ import annotations

import os
import pickle
import threading
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import numpy as np

from influencer_pipeline.errors import InputError, ModelNotAvailableError
from influencer_pipeline.voice.timing import (
    Token,
    Word,
    clamp_in_order,
    decode_audio,
    lay_out,
    split_words,
    spread_over_speech,
)

WHISPER_RATE = 16_000  # Hz, what whisper's mel front end expects
EXAMPLE_MODEL = "small"


def whisper_cache_dir() -> Path:
    """Where official models are looked for: WHISPER_CACHE, else whisper's own default (XDG cache)/whisper."""
    if os.environ.get("WHISPER_CACHE"):
        return Path(os.environ["WHISPER_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper"


def _official_files() -> dict[str, str]:
    """Official model name -> checkpoint file name (the last part of its download URL)."""
    import whisper

    return {name: url.rsplit("/", 1)[-1] for name, url in whisper._MODELS.items()}


def how_to_provide(model: str, cache: Path, reason: str) -> str:
    """The error text for a model that is not here: what was looked for, why it failed, and the exact fix."""
    name = model if model in _official_files() else EXAMPLE_MODEL
    file_name = _official_files()[name]
    return (
        f"whisper model {model!r} is not available on this machine (nothing is downloaded at run time): {reason}. "
        f"Fix: on a machine with internet run `python -c \"import whisper; whisper.load_model('{name}')\"`, "
        f"copy the ~/.cache/whisper/{file_name} it saves to this machine and set WHISPER_MODEL=/abs/path/{file_name}; "
        f"or put {file_name} into {cache} (or set WHISPER_CACHE to a folder holding it) and set WHISPER_MODEL={name}. "
        "Without a model, leave WHISPER_MODEL unset: subtitles are then timed from the voice engine or the script"
    )


def resolve_checkpoint(model: str) -> tuple[Path, str | None]:
    """The checkpoint file for `model` (a path, or an official name found in the cache) and the official name
    it corresponds to, if any; `ModelNotAvailableError` with the fix otherwise. Never downloads."""
    cache = whisper_cache_dir()
    path = Path(model).expanduser()
    by_file = {file_name: name for name, file_name in reversed(_official_files().items())}
    if path.is_file():
        return path, by_file.get(path.name)
    file_name = _official_files().get(model)
    if file_name is None:
        names = ", ".join(_official_files())
        raise ModelNotAvailableError(
            how_to_provide(model, cache, f"there is no file {path.resolve()}, and it is not a model name ({names})")
        )
    if not (cache / file_name).is_file():
        raise ModelNotAvailableError(how_to_provide(model, cache, f"{cache / file_name} does not exist"))
    return cache / file_name, model


class WhisperAligner:
    """Times words with whisper's `word_timestamps`, greedy decoding (`temperature=0`: deterministic, and no
    slow fallback passes), and the voice's language when known.

    `model` is a checkpoint path or an official name already in the cache (resolved now, so a missing model
    fails at configuration time); it is loaded on first use. `sample_len` caps the tokens decoded per 30 s
    window (None: whisper's default); `language` is used when the track does not say. One lock per aligner:
    whisper installs hooks on the model while it times words, so calls must not overlap.
    """

    def __init__(
        self, model: str, device: str = "auto", *, language: str | None = None, sample_len: int | None = None
    ) -> None:
        self.checkpoint, self.official_name = resolve_checkpoint(model)
        self.device = device
        self.language = language
        self.sample_len = sample_len
        self.name = f"whisper:{self.official_name or self.checkpoint.name}"
        self._loaded: tuple[Any, str] | None = None
        self._lock = threading.Lock()

    def words(self, audio: Path, script: str | None = None, language: str | None = None) -> list[Word]:
        """The words heard in `audio` with their times; with `script`, the script's own words at those times."""
        samples = decode_audio(audio, WHISPER_RATE)
        duration = len(samples) / WHISPER_RATE
        with self._lock:
            heard = self._transcribe(samples, language or self.language, duration)
        if script is None:
            return heard
        tokens = split_words(script)
        if not heard:
            return spread_over_speech(tokens, samples, WHISPER_RATE, duration) if tokens else []
        return align_to_script(heard, tokens, duration)

    def _model(self) -> tuple[Any, str]:
        """The loaded model and its device, once; a checkpoint that will not load is a `ModelNotAvailableError`."""
        if self._loaded is not None:
            return self._loaded
        import torch
        import whisper

        device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("device", f"{device!r} asks for a GPU, but torch sees none here", "use 'auto' or 'cpu'")
        try:
            model = whisper.load_model(str(self.checkpoint), device=device)
        except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            reason = f"{self.checkpoint} is not a whisper checkpoint ({type(exc).__name__}: {detail})"
            model_name = self.official_name or str(self.checkpoint)
            raise ModelNotAvailableError(how_to_provide(model_name, whisper_cache_dir(), reason)) from exc
        self._use_official_heads(model)
        self._loaded = (model, device)
        return self._loaded

    def _use_official_heads(self, model: Any) -> None:
        """Official checkpoints name the attention heads that track timing best; whisper only applies them when
        loading by name, so do it here. A same-named file of other dimensions (a fine-tune) keeps the default."""
        import whisper

        heads = whisper._ALIGNMENT_HEADS.get(self.official_name or "")
        if heads is None:
            return
        try:
            model.set_alignment_heads(heads)
        except (RuntimeError, ValueError):
            return

    def _transcribe(self, samples: np.ndarray, language: str | None, duration: float) -> list[Word]:
        from whisper.tokenizer import LANGUAGES

        model, device = self._model()
        options: dict[str, Any] = {"sample_len": self.sample_len} if self.sample_len else {}
        if not model.is_multilingual:
            language = "en"
        result = model.transcribe(
            samples,
            word_timestamps=True,
            temperature=0.0,
            language=language if language in LANGUAGES else None,
            fp16=device.startswith("cuda"),
            verbose=None,
            **options,
        )
        heard = [
            Word(word["word"].strip(), float(word["start"]), float(word["end"]))
            for segment in result["segments"]
            for word in segment.get("words", [])
            if word["word"].strip()
        ]
        return clamp_in_order(heard, duration)


def _key(text: str) -> str:
    """A word as compared across script and transcript: case-folded letters and digits only."""
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def align_to_script(heard: list[Word], tokens: list[Token], duration_s: float) -> list[Word]:
    """The script's words timed by the words whisper heard, matched as two sequences (difflib).

    Matched words take the heard timing. A run of script words facing a run of heard words of the same length is
    taken as misheard word for word ("Ava" heard as "Eva"); runs of different lengths share the heard run's time;
    script words nothing was heard for share the gap between their heard neighbours. Heard words that are not in
    the script (a hallucination, a word split in two) just give up their time.
    """
    script_keys = [_key(t.text) for t in tokens]
    heard_keys = [_key(w.text) for w in heard]
    words: list[Word] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, script_keys, heard_keys, autojunk=False).get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            words += [
                Word(tokens[i].text, heard[j].start, heard[j].end)
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
            ]
        elif tag == "replace":
            words += lay_out(tokens[i1:i2], heard[j1].start, heard[j2 - 1].end)
        elif tag == "delete":
            gap_start = heard[j1 - 1].end if j1 > 0 else 0.0
            gap_end = heard[j1].start if j1 < len(heard) else duration_s
            words += lay_out(tokens[i1:i2], gap_start, gap_end)
    return clamp_in_order(words, duration_s)
