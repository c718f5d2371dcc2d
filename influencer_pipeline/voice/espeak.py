"""The embedded voice: espeak-ng, driven in-process through ctypes from the library that espeakng-loader ships.

Why espeak-ng is the default: it is the one offline voice that installs with pip on any machine (espeakng-loader
bundles `libespeak-ng` and the data for 100+ languages: no system package, no model download), it synthesises
hundreds of times faster than real time, and it reports where every word starts while it synthesises, so subtitles
get exact timings with no speech recognition. It sounds robotic; production points the voice at an
OpenAI-compatible speech API. Piper sounds much better, but its voices are downloads (the one pip-installable
voice is a third-party repackage of unclear provenance). Licensing: espeak-ng is GPL-3.0-or-later (as is piper)
and the espeakng-loader wheel declares no licence; it is a run-time dependency here, not vendored.

The library is one global state machine (concurrent calls crash it), so it is initialised once per process in
synchronous retrieval mode (samples and events come back through a callback; no audio device is touched) and every
use holds one lock. Output is not byte-identical across calls in one process: the wave generator keeps its
pitch-flutter position (a static in wavegen.c that neither re-seeding nor re-initialising resets) from the previous
call, which moves lengths by about 10 ms.
"""

from __future__ import annotations

import bisect
import ctypes
import difflib
import itertools
import threading
import unicodedata
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from influencer_pipeline.errors import InputError
from influencer_pipeline.voice.timing import (
    Token,
    VoiceTrack,
    Word,
    atomic_output,
    frame_length,
    lay_out,
    split_words,
    voiced_frames,
)

# speak_lib.h constants
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000  # fail with an error code instead of calling exit() when the data is missing
POS_CHARACTER = 1
CHARS_UTF8 = 1
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
PARAM_RATE = 1
PARAM_PITCH = 3
EE_OK = 0
EE_NOT_FOUND = 2

MIN_WPM, MAX_WPM = 80, 450  # espeak-ng's own limits for espeakRATE
LIST_VOICES_HINT = (
    "python -c 'from influencer_pipeline.voice.espeak import list_voices; print(*list_voices(), sep=chr(10))'"
)
# Read aloud by espeak ("asterisk", "hash", "waving hand") but never meant to be heard in a voice-over.
UNSPOKEN_MARKS = frozenset("*#_~`|\u200d\ufe0e\ufe0f")


class VoiceUnavailableError(RuntimeError):
    """The espeak-ng library that espeakng-loader should provide cannot be loaded or initialised."""


class _Event(ctypes.Structure):
    """`espeak_EVENT`; the trailing union is read as its widest member (`char string[8]` vs a pointer)."""

    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    )


class _VoiceInfo(ctypes.Structure):
    """`espeak_VOICE`: `languages` is a list of (priority byte, zero-terminated code) pairs."""

    _fields_ = (
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    )


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class _Capture:
    """What one synthesis produced: sample chunks, and (0-based character position, ms) of each word start."""

    chunks: list[np.ndarray] = field(default_factory=list)
    word_starts: list[tuple[int, int]] = field(default_factory=list)


class _Engine:
    """The process's one initialised libespeak-ng; callers hold `_LOCK` around every method."""

    def __init__(self) -> None:
        self.lib, data_path = _load_library()
        self._declare_signatures()
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise VoiceUnavailableError(
                f"espeak-ng could not initialise with its data at {data_path.decode()} (code {self.sample_rate}). "
                "Fix: reinstall the PyPI package espeakng-loader (pip install --force-reinstall espeakng-loader)"
            )
        self._capture = _Capture()
        self._callback = _SynthCallback(self._on_synth)  # kept referenced: the library holds a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _declare_signatures(self) -> None:
        lib = self.lib
        lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = (_SynthCallback,)
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
        lib.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_VoiceInfo)
        lib.espeak_ListVoices.argtypes = (ctypes.c_void_p,)
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceInfo))
        lib.espeak_Synth.argtypes = (
            *(ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint),
            *(ctypes.c_void_p, ctypes.c_void_p),
        )

    def _on_synth(self, samples: ctypes._Pointer, count: int, events: ctypes._Pointer) -> int:
        """Called by espeak_Synth, on this thread, for every chunk of audio with the events it covers."""
        if count > 0 and samples:
            self._capture.chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        index = 0
        while events[index].type != EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == EVENT_WORD:
                self._capture.word_starts.append((event.text_position - 1, event.audio_position))
            index += 1
        return 0  # 0 = keep synthesising

    def select(self, voice: str, words_per_minute: int, pitch: int) -> str | None:
        """Make `voice` current with this rate and pitch (set every time: another caller may have changed them);
        return its language code."""
        status = self.lib.espeak_SetVoiceByName(voice.encode())
        if status == EE_NOT_FOUND:
            raise InputError("voice", f"espeak-ng has no voice {voice!r}", _unknown_voice_fix(voice, self.voices()))
        if status != EE_OK:
            raise VoiceUnavailableError(f"espeak-ng could not select the voice {voice!r} (code {status})")
        self.lib.espeak_SetParameter(PARAM_RATE, words_per_minute, 0)
        self.lib.espeak_SetParameter(PARAM_PITCH, pitch, 0)
        current = self.lib.espeak_GetCurrentVoice()
        return _first_language(current.contents.languages) if current else None

    def synthesize(self, text: str) -> _Capture:
        """The samples and word starts for `text` with the current voice."""
        self._capture = _Capture()
        encoded = text.encode()
        status = self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if status != EE_OK:
            raise VoiceUnavailableError(f"espeak-ng failed to synthesise the text (code {status})")
        return self._capture

    def voices(self) -> list[tuple[str, str]]:
        """(language code, descriptive name) of every installed voice."""
        listing = self.lib.espeak_ListVoices(None)
        found: list[tuple[str, str]] = []
        index = 0
        while listing[index]:
            info = listing[index].contents
            found.append((_first_language(info.languages) or "", info.name.decode(errors="replace")))
            index += 1
        return found


def _load_library() -> tuple[ctypes.CDLL, bytes]:
    """libespeak-ng and its data folder from espeakng-loader, or an error naming the package to install."""
    fix = "Fix: pip install espeakng-loader==0.2.4 (it bundles libespeak-ng and its voices; no system package)"
    try:
        import espeakng_loader

        return ctypes.CDLL(espeakng_loader.get_library_path()), espeakng_loader.get_data_path().encode()
    except (ImportError, OSError, RuntimeError) as exc:
        raise VoiceUnavailableError(f"the embedded voice cannot load espeak-ng ({exc}). {fix}") from exc


def _first_language(languages: bytes | None) -> str | None:
    """The first language code of an `espeak_VOICE.languages` list (skipping its priority byte)."""
    if not languages:
        return None
    return languages[1:].split(b"\0", 1)[0].decode(errors="replace") or None


def _unknown_voice_fix(voice: str, voices: list[tuple[str, str]]) -> str:
    codes = sorted({code for code, _ in voices if code})
    close = difflib.get_close_matches(voice.lower(), codes, n=4, cutoff=0.5)
    nearest = f"close matches: {', '.join(close)}; " if close else ""
    return (
        f"use a language code such as en-us or en-gb, maybe with a variant (en-us+f3); {nearest}all: {LIST_VOICES_HINT}"
    )


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    """The process's engine, initialised on first use; call with `_LOCK` held."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def list_voices() -> list[tuple[str, str]]:
    """(language code, name) of every voice espeak-ng has here, e.g. ("en-us", "English (America)")."""
    with _LOCK:
        return _engine().voices()


def speakable(text: str) -> str:
    """`text` with emoji and Markdown marks blanked out, keeping every other character at its position so the
    engine's character positions still point into the original script."""
    return "".join(" " if ch in UNSPOKEN_MARKS or unicodedata.category(ch) == "So" else ch for ch in text)


class EspeakVoice:
    """The embedded `Voice`: espeak-ng with exact word timings from the engine's own word events."""

    name = "espeak-ng"

    def __init__(self, voice: str = "en-us", words_per_minute: int = 165, pitch: int = 50) -> None:
        if not MIN_WPM <= words_per_minute <= MAX_WPM:
            raise InputError(
                "words_per_minute",
                f"espeak-ng speaks {MIN_WPM}-{MAX_WPM} words a minute, got {words_per_minute}",
                "use 140-190 for a natural pace",
            )
        if not 0 <= pitch <= 100:
            raise InputError("pitch", f"must be 0-100, got {pitch}", "use 50 for the voice's own pitch")
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.pitch = pitch

    def speak(self, text: str, output: Path, voice: str | None = None) -> VoiceTrack:
        """Speak `text` into a mono 16-bit WAV at `output` and time each of its words from the engine's events."""
        chosen = voice or self.voice
        spoken = speakable(text)
        if not spoken.strip():
            raise InputError("text", "the voice-over script has nothing to say aloud", "write at least one word")
        with _LOCK:
            engine = _engine()
            language = engine.select(chosen, self.words_per_minute, self.pitch)
            capture = engine.synthesize(spoken)
            sample_rate = engine.sample_rate
        samples = np.concatenate(capture.chunks) if capture.chunks else np.zeros(0, dtype=np.int16)
        with atomic_output(output) as partial:
            _write_wav(partial, samples, sample_rate)
        return VoiceTrack(
            path=Path(output),
            duration_s=len(samples) / sample_rate,
            sample_rate=sample_rate,
            words=engine_words(split_words(text), capture.word_starts, samples, sample_rate),
            engine=self.name,
            voice=chosen,
            language=language.split("-")[0] if language else None,
        )


def engine_words(
    tokens: list[Token], word_starts: list[tuple[int, int]], samples: np.ndarray, sample_rate: int
) -> list[Word]:
    """One `Word` per script token from the engine's word starts, tightened to the speech actually heard.

    A token's start is the first word event inside it (a token the engine reads as several words, "165" or
    "well-known", gets several). Tokens with no event (a dash, a blanked emoji) share the time of the token
    before them. Each word then runs until the next one starts, trimmed to the voiced frames inside that window,
    so a subtitle does not linger through the pause after a sentence.
    """
    if not tokens:
        return []
    duration = len(samples) / sample_rate
    starts = _token_starts(tokens, word_starts)
    starts[0] = starts[0] if starts[0] is not None else 0.0
    anchors = [index for index, start in enumerate(starts) if start is not None] + [len(tokens)]
    words: list[Word] = []
    for anchor, following in itertools.pairwise(anchors):
        window_end = starts[following] if following < len(tokens) else duration
        words += lay_out(tokens[anchor:following], starts[anchor], max(window_end, starts[anchor]))
    return _trim_to_voice(words, samples, sample_rate, duration)


def _token_starts(tokens: list[Token], word_starts: list[tuple[int, int]]) -> list[float | None]:
    """Seconds of the first word event inside each token, None for tokens the engine reported nothing for."""
    token_starts = [token.start for token in tokens]
    starts: list[float | None] = [None] * len(tokens)
    for position, milliseconds in word_starts:
        index = bisect.bisect_right(token_starts, position) - 1
        if index >= 0 and position < tokens[index].end and starts[index] is None:
            starts[index] = milliseconds / 1000
    return starts


def _trim_to_voice(words: list[Word], samples: np.ndarray, sample_rate: int, duration: float) -> list[Word]:
    """Move each word's start to the first voiced frame and its end to the last one before the next word."""
    voiced = voiced_frames(samples.astype(np.float32) / 32768.0, sample_rate)
    frame_s = frame_length(sample_rate) / sample_rate
    trimmed: list[Word] = []
    for index, word in enumerate(words):
        window_end = words[index + 1].start if index + 1 < len(words) else duration
        first, last = int(word.start / frame_s), int(window_end / frame_s)  # frames that start inside the window
        heard = np.flatnonzero(voiced[first:last])
        if heard.size == 0:
            trimmed.append(word)
            continue
        start = max(word.start, float(first + heard[0]) * frame_s)
        end = min(window_end, float(first + heard[-1] + 1) * frame_s, duration)
        trimmed.append(Word(word.text, start, max(end, start)))
    return trimmed


def _write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(samples.astype("<i2").tobytes())
