"""A voice from any OpenAI-compatible speech endpoint: OpenAI itself, or a local piper / kokoro server.

`POST {base_url}/audio/speech` with a JSON body answers with the audio bytes. Rate limits (429) and server
errors (5xx), dropped connections and timeouts are retried with exponential backoff, honouring `Retry-After`;
anything else fails at once with a message that says what to fix. The API key is sent only in the
`Authorization` header and is redacted from every message and log line, because servers echo it back in errors;
server text is redacted before it is cut short, so not even the key's first characters get through.

Whatever the server sends (a WAV whose header says "length unknown", as streamed WAVs do, or another format
when `response_format` is ignored) is rewritten by imageio-ffmpeg's ffmpeg into a plain mono 16-bit WAV, so
the rest of the pipeline reads one format. The API reports no word timings: `word_timings` derives them.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import wave
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import requests

from influencer_pipeline.errors import InputError
from influencer_pipeline.redaction import Secret, excerpt, redact, split_userinfo, url_password
from influencer_pipeline.retries import Backoff, Retryable, RetryAfterTooLong, call_with_retries
from influencer_pipeline.retry_after import retry_after_seconds
from influencer_pipeline.voice.timing import VoiceTrack, atomic_output

log = logging.getLogger(__name__)

MAX_INPUT_CHARS = 4096  # the API's limit on `input`
CONNECT_TIMEOUT_S = 10.0
SERVER_TEXT_LIMIT = 200  # how much of a server's error body is quoted
AUDIO_EXCERPT_LIMIT = 120  # how much of a non-audio answer is quoted
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))  # as OpenAI's own client retries
AUTH_STATUS = frozenset({401, 403})


class SpeechAPIError(RuntimeError):
    """The speech API could not produce audio; the message says what failed and what to do (never the key)."""


class OpenAISpeechVoice:
    """`Voice` backed by `POST {base_url}/audio/speech` (base_url like https://api.openai.com/v1).

    `timeout_s` bounds each attempt from connecting to the last byte; `max_retries` is how many times a
    retryable failure is repeated; `backoff_s` is the first wait (doubling, with up to half of it again as jitter)
    when the server names none; a server asking to wait longer than `max_wait_s` fails at once rather than stalling
    the run. Retries run through `influencer_pipeline.retries` (tenacity), waiting with `sleep`.
    `api_key_env` is only named in error messages, so they can say where the key comes from.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str = "tts-1",
        voice: str = "alloy",
        timeout_s: float = 60,
        max_retries: int = 3,
        *,
        backoff_s: float = 1.0,
        max_wait_s: float = 60.0,
        api_key_env: str = "OPENAI_API_KEY",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InputError("base_url", f"{base_url!r} is not an http(s) URL", "use e.g. https://api.openai.com/v1")
        if max_retries < 0:
            raise InputError("max_retries", f"must be 0 or more, got {max_retries}", "use 3")
        self.url = f"{base_url.rstrip('/')}/audio/speech"
        self._shown_url = redact(self.url)  # for messages: a base URL may carry user:password@
        self.model = model
        self.voice = voice
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self.api_key_env = api_key_env
        self._sleep = sleep
        self.name = f"openai-speech:{model}"
        self._api_key = Secret(api_key) if api_key else None
        self._url_password = url_password(self.url)
        # Requests go to the URL without user:password@: HTTP Basic from it when there is no key, else the key as
        # Bearer (requests would otherwise replace the key with the URL's Basic credentials).
        self._endpoint, self._basic = split_userinfo(self.url)
        self._http = requests.Session()

    def __repr__(self) -> str:
        return f"OpenAISpeechVoice(url={self._shown_url!r}, model={self.model!r}, voice={self.voice!r})"

    def speak(self, text: str, output: Path, voice: str | None = None) -> VoiceTrack:
        """Have the API speak `text` and store it as a mono 16-bit WAV at `output`; `words` stay empty."""
        chosen = voice or self.voice
        if not text.strip():
            raise InputError("text", "the voice-over script is empty", "give the voice something to say")
        if len(text) > MAX_INPUT_CHARS:
            raise InputError(
                "text", f"the speech API takes at most {MAX_INPUT_CHARS} characters, got {len(text)}", "shorten it"
            )
        body = {"model": self.model, "input": text, "voice": chosen, "response_format": "wav"}
        audio = self._request(body)
        with atomic_output(output) as partial:
            self._to_wav(audio, partial)
        with wave.open(str(output), "rb") as track:
            sample_rate, frames = track.getframerate(), track.getnframes()
        return VoiceTrack(
            path=Path(output),
            duration_s=frames / sample_rate,
            sample_rate=sample_rate,
            words=[],
            engine=self.name,
            voice=chosen,
        )

    def _request(self, body: dict[str, Any]) -> bytes:
        """The audio bytes, after up to `max_retries` retries of retryable failures."""

        def on_retry(number: int, failure: Retryable, wait: float) -> None:
            note = f"speech API: {failure.reason}; retry {number} of {self.max_retries} in {wait:.1f} s"
            log.warning("%s", self._redact(note))

        backoff = Backoff(
            first_s=self.backoff_s,
            jitter_s=self.backoff_s / 2,
            max_backoff_s=self.max_wait_s,
            max_retry_after_s=self.max_wait_s,
        )
        try:
            return call_with_retries(
                lambda: self._attempt(body),
                retries=self.max_retries,
                backoff=backoff,
                sleep=self._sleep,
                on_retry=on_retry,
            )
        except RetryAfterTooLong as too_long:
            raise SpeechAPIError(
                self._redact(
                    f"the speech API at {self.url} answered {too_long.failure.reason} and asks to wait "
                    f"{too_long.wait_s:.0f} s, longer than max_wait_s={self.max_wait_s:g}. Fix: check the account's "
                    "rate limits and quota, then run again later"
                )
            ) from None
        except Retryable as failure:
            raise SpeechAPIError(
                self._redact(
                    f"the speech API at {self.url} failed {self.max_retries + 1} times, last with {failure.reason}. "
                    "Fix: check the server is up and not overloaded, then run again"
                )
            ) from None

    def _attempt(self, body: dict[str, Any]) -> bytes:
        """One POST, read to the end within `timeout_s`; retryable failures raise `Retryable`."""
        headers = {"Authorization": f"Bearer {self._api_key.reveal()}"} if self._api_key else {}
        deadline = time.monotonic() + self.timeout_s
        try:
            with self._http.post(
                self._endpoint,
                auth=None if self._api_key else self._basic,
                json=body,
                headers=headers,
                timeout=(min(CONNECT_TIMEOUT_S, self.timeout_s), self.timeout_s),
                stream=True,
            ) as response:
                content = _read_until(response, deadline, self.timeout_s)
                status, response_headers = response.status_code, response.headers
        except requests.Timeout:
            raise Retryable(f"no complete answer within timeout_s={self.timeout_s:g} s") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise Retryable(f"a dropped or refused connection ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise SpeechAPIError(self._redact(f"the request to {self.url} failed: {exc}")) from None
        if status == 200:
            return content
        reason = f"HTTP {status}: {self._server_message(content)}"
        if status in RETRYABLE_STATUS:
            raise Retryable(reason, _retry_after(response_headers))
        raise SpeechAPIError(self._redact(self._refusal(status, reason, body["voice"])))

    def _refusal(self, status: int, reason: str, voice: str) -> str:
        """The message for a non-retryable answer: the key for 401/403, the request itself for other 4xx."""
        if status in AUTH_STATUS and self._api_key is None:
            return f"the speech API at {self.url} needs an API key ({reason}). Fix: set {self.api_key_env}"
        if status in AUTH_STATUS:
            return (
                f"the speech API at {self.url} refused the API key ({reason}). Fix: check the key in "
                f"{self.api_key_env} (valid, not revoked, allowed to use {self.model!r})"
            )
        return (
            f"the speech API at {self.url} rejected the request ({reason}). Fix: check that this server offers "
            f"model {self.model!r} and voice {voice!r}"
        )

    def _to_wav(self, audio: bytes, target: Path) -> None:
        """Rewrite whatever audio the server sent as a plain mono 16-bit WAV at the server's sample rate."""
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", "pipe:0"]
        command += ["-ac", "1", "-c:a", "pcm_s16le", "-f", "wav", "-y", str(target)]
        result = subprocess.run(command, input=audio, capture_output=True, check=False)
        if result.returncode != 0:
            start = excerpt(audio, AUDIO_EXCERPT_LIMIT, self._api_key, self._url_password)
            raise SpeechAPIError(
                self._redact(
                    f"the speech API at {self.url} answered 200 but not with audio ffmpeg can read "
                    f"({len(audio)} bytes starting {start!r}). Fix: check base_url points at an "
                    "OpenAI-compatible /audio/speech endpoint"
                )
            )

    def _redact(self, text: str) -> str:
        """`text` without the API key (servers echo it back in errors) or the URL's credentials."""
        return redact(text, self._api_key, self._url_password)

    def _server_message(self, content: bytes) -> str:
        """The error message from an OpenAI-shaped JSON body, else the start of the body; redacted, then cut."""
        try:
            payload = json.loads(content)
        except ValueError:
            return excerpt(content, SERVER_TEXT_LIMIT, self._api_key, self._url_password).strip() or "no details"
        error = payload.get("error") if isinstance(payload, dict) else None
        text = str(error["message"]) if isinstance(error, dict) and error.get("message") else json.dumps(payload)
        return excerpt(text, SERVER_TEXT_LIMIT, self._api_key, self._url_password)


def _read_until(response: requests.Response, deadline: float, timeout_s: float) -> bytes:
    """The whole body, or `requests.Timeout` once `deadline` passes (a slow trickle beats per-read timeouts)."""
    chunks: list[bytes] = []
    for chunk in response.iter_content(64 * 1024):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise requests.Timeout(f"the answer took longer than {timeout_s:g} s")
    return b"".join(chunks)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return retry_after_seconds(headers.get("Retry-After"))
