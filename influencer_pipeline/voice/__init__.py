"""Voice-overs and their word timings: a `Voice` speaks a script into a WAV, `word_timings` times its words.

Engines: `EspeakVoice` (embedded default, pip-installed espeak-ng, exact word events) and `OpenAISpeechVoice`
(any OpenAI-compatible `/audio/speech`). Timing sources, best first: the engine's own events, whisper
(`WhisperAligner`, when a model is on this machine), then the script spread over the track's speech.
"""

from influencer_pipeline.voice.espeak import EspeakVoice, VoiceUnavailableError, list_voices
from influencer_pipeline.voice.openai_speech import OpenAISpeechVoice, SpeechAPIError
from influencer_pipeline.voice.timing import Voice, VoiceTrack, Word, script_timing, split_words, word_timings
from influencer_pipeline.voice.whisper_words import WhisperAligner

__all__ = [
    "EspeakVoice",
    "OpenAISpeechVoice",
    "SpeechAPIError",
    "Voice",
    "VoiceTrack",
    "VoiceUnavailableError",
    "WhisperAligner",
    "Word",
    "list_voices",
    "script_timing",
    "split_words",
    "word_timings",
]
