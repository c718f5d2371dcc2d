"""Key prefixes leak (issue 11): server text was cut before it was redacted, so a key straddling the cut kept its
first characters in the message, where a whole-key match no longer found it.

Each test puts a key right where the old code cut (300 characters for the chat writer, 200 for a speech server's
non-JSON error body, 120 for the speech `_to_wav` excerpt, 2000 for a failure notification) and asserts that no
part of it reaches the message.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from influencer_pipeline.content.openai_chat import SERVER_TEXT_LIMIT, OpenAIChatWriter
from influencer_pipeline.content.writers import WriterError
from influencer_pipeline.notify import MAX_FAILURE_MESSAGE_CHARS, truncate_message
from influencer_pipeline.personas import Persona
from influencer_pipeline.redaction import REDACTED, Secret, excerpt, redact, redact_and_clip
from influencer_pipeline.voice.openai_speech import OpenAISpeechVoice, SpeechAPIError
from tests.content.llm_standin import LLMStandin, Status

# The distinctive middle part is what must never be seen; the prefix is the shape real keys have.
KEY = "sk-or-v1-LEAKPREFIX-0123456789abcdef0123456789abcdef"
PREFIX = "LEAKPREF"  # 8 characters that the old code let through
AVA = Persona(slug="ava", trigger_word="ohwx", class_word="woman", platforms=("instagram",), themes=("beaches",))


def _seen(text: str) -> bool:
    return PREFIX in text or KEY in text


def test_chat_writer_redacts_a_key_echoed_at_the_cut_before_cutting() -> None:
    """OpenAI-style 401: 'Incorrect API key provided: <key>' where the key starts a few characters before 300."""
    echo = " (you sent Bearer "
    filler = "x" * (SERVER_TEXT_LIMIT - len(echo) - len("sk-or-v1-") - len(PREFIX) - 2)
    with LLMStandin(api_key=KEY) as standin:
        standin.then(Status(401, message=filler, echo_key=True))
        writer = OpenAIChatWriter(base_url=standin.url, api_key=KEY, model="test/model", timeout_s=5, max_retries=0)
        with pytest.raises(WriterError) as caught:
            writer.plan_day(AVA, date(2026, 12, 1), posts=1)
    message = str(caught.value)
    assert "x" * 50 in message, message  # the server text is quoted, up to the limit
    assert not _seen(message), message


class _EchoingServer:
    """A speech endpoint behind a misbehaving proxy: answers with whatever `answer(authorization)` returns."""

    def __init__(self, status: int, content_type: str, answer: Callable[[str], str]) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = outer.answer(self.headers.get("Authorization", "")).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.status, self.content_type, self.answer = status, content_type, answer
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> _EchoingServer:
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _page_with_key_at(position: int) -> Callable[[str], str]:
    """An HTML page quoting the request's Authorization value so that the key starts `position` characters in."""

    def answer(authorization: str) -> str:
        key = authorization.removeprefix("Bearer ")
        head = "<html><body>Bad gateway; request was: "
        return head + "." * (position - len(head)) + key + "</body></html>"

    return answer


@pytest.fixture
def speech(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    yield KEY, tmp_path / "voice.wav"


@pytest.mark.parametrize(
    ("status", "cut"),
    [
        (400, 200),  # a non-JSON error body: its first 200 characters are quoted
        (200, 120),  # a 200 that is not audio: the `_to_wav` excerpt quotes its first 120 bytes
    ],
)
def test_speech_client_redacts_a_key_echoed_at_the_cut_before_cutting(
    speech: tuple[str, Path], status: int, cut: int
) -> None:
    key, output = speech
    with _EchoingServer(status, "text/html", _page_with_key_at(cut - 9 - len(PREFIX))) as server:
        voice = OpenAISpeechVoice(server.url, key, max_retries=0)
        with pytest.raises(SpeechAPIError) as caught:
            voice.speak("Hello there.", output)
    message = str(caught.value)
    assert "Bad gateway" in message, message
    assert not _seen(message), message
    assert not output.exists()


def test_failure_notifications_are_redacted_before_they_are_cut() -> None:
    """A run's failure message goes to Slack and n8n: a token quoted near the limit leaves nothing behind."""
    tail = f"; the proxy said: Authorization: Bearer {KEY} was refused"
    message = "step failed: " + "y" * (MAX_FAILURE_MESSAGE_CHARS - 40 - len("step failed: ")) + tail
    shown = truncate_message(message)
    assert len(shown) <= MAX_FAILURE_MESSAGE_CHARS and shown.startswith("step failed: yyy")
    assert not _seen(shown), shown[-80:]
    with_url = truncate_message("could not connect to postgresql://ledger:hunter2-LEAKPREFIX@db:5432/ledger")
    assert "hunter2" not in with_url and PREFIX not in with_url
    assert "postgresql://***@db:5432/ledger" in with_url


# ---- the helper on its own ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        "sk-proj-LEAKPREFIX0123456789",  # an OpenAI/OpenRouter-style key
        json.dumps({"api_key": "opaque-LEAKPREFIX-value"}),
        "https://user:LEAKPREFIX-pw@example.com/v1",
        "redis://:LEAKPREFIX-pw@cache:6379/0",
        "postgresql+psycopg2://ledger:p@ss-LEAKPREFIX@db/ledger",
        "GET /x?access_token=LEAKPREFIX-tok&fields=id",
        "grant_type=refresh&client_secret=LEAKPREFIX-s",
        "Authorization: Bearer LEAKPREFIX-tok",
        "Authorization: Basic LEAKPREFIXdXNlcjpwYXNz",
        "EAAGLEAKPREFIX0123456789abcdef",  # a Meta token
    ],
)
def test_redact_removes_credential_shapes_without_being_told_the_secret(shape: str) -> None:
    cleaned = redact(f"server said: {shape} (end)")
    assert PREFIX not in cleaned, cleaned
    assert "server said:" in cleaned and REDACTED in cleaned and cleaned.endswith("(end)")


def test_encoded_forms_of_a_known_secret_are_removed() -> None:
    secret = "p@ss/word+LEAKPREFIX=="
    for form in (secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)):
        assert PREFIX not in redact(f"echo {form} echo", Secret(secret))


def test_redact_then_clip_never_keeps_a_prefix_wherever_the_cut_falls() -> None:
    for cut in range(1, 80):
        text = "." * 40 + KEY + "." * 40
        assert not _seen(redact_and_clip(text, cut, KEY))
        assert not _seen(excerpt(text.encode(), cut, KEY))
        assert not _seen(excerpt(text, cut))  # no known secret: the key's shape is enough


def test_plain_text_is_left_alone() -> None:
    text = "HTTP 429: Rate limit reached; the access token expired; basic plan; code 190/463; see https://x.example/a"
    assert redact(text) == text
    assert repr(Secret(KEY)) == "Secret('***')" and KEY not in f"{Secret(KEY)}"


@pytest.mark.parametrize("platform", ["youtube", "meta"])
def test_platform_errors_quote_a_non_json_body_without_the_token_prefix(platform: str) -> None:
    """A proxy's HTML error page quoting the request's token near the 200-character cut (YouTube's `ya29.` and
    Instagram Login's `IGAA` tokens have no shape the helper knows: only the token itself finds them)."""
    import requests

    from influencer_pipeline.publishing import meta_errors, youtube

    token = "ya29.LEAKPREFIX-a0123456789abcdef0123456789" if platform == "youtube" else "IGAALEAKPREFIX0123456789ab"
    response = requests.Response()
    response.status_code, response.encoding = 502, "utf-8"
    head = "<html>Bad gateway "
    body = head + "." * (190 - len(head) - token.index(PREFIX)) + token  # the prefix ends at 198, inside the cut
    assert body.index(PREFIX) + len(PREFIX) == 198
    response._content = body.encode()
    if platform == "youtube":
        shown = youtube._error_message(response, token)
    else:
        shown = meta_errors.parse_error(response, token).message
    assert "Bad gateway" in shown
    assert PREFIX not in shown, shown
