"""Where the authorization redirect arrives: a one-shot listener on 127.0.0.1 where the platform allows loopback
redirects (RFC 8252 section 7.3; Google, TikTok), or a public HTTPS callback the person registers with Meta, which a
tunnel or reverse proxy forwards to `--listen-port` or whose address the person pastes.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from influencer_pipeline.accounts.errors import OAuthError
from influencer_pipeline.accounts.providers import Provider
from influencer_pipeline.errors import InputError

_PAGES = {
    200: "Authorization received. You can close this tab and return to the terminal.",
    400: "This address is not a sign-in callback.",
    404: "Not found.",
    409: "This sign-in was already received. Return to the terminal.",
}


class LoopbackReceiver:
    """A one-shot listener on 127.0.0.1 for the platform's redirect (RFC 8252 section 7.3).

    It captures the first request on its path that carries a `state` or an `error`, answers the browser with a
    plain page, and refuses every later callback. Request lines are never logged: they carry the code."""

    def __init__(self, path: str = "/callback", port: int = 0) -> None:
        self.path = path
        self._params: dict[str, str] | None = None
        self._captured = threading.Event()
        self._guard = threading.Lock()
        try:
            self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        except OSError as exc:
            raise InputError(
                "--listen-port", f"cannot listen on 127.0.0.1:{port} ({exc.strerror})", "pick a free port"
            ) from None
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def wait(self, timeout_s: float) -> dict[str, str]:
        """The callback's query parameters, once the browser delivers them."""
        if not self._captured.wait(timeout_s) or self._params is None:
            raise OAuthError(f"no sign-in came back within {timeout_s:g} s; run the link command again", transient=True)
        return dict(self._params)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _answer(self, target: str) -> int:
        url = urlsplit(target)
        if url.path != self.path:
            return 404
        params = dict(parse_qsl(url.query))
        if "state" not in params and "error" not in params:
            return 400
        with self._guard:
            if self._params is not None:
                return 409
            self._params = params
        self._captured.set()
        return 200

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = receiver._answer(self.path)
                body = f"<!doctype html><title>influencer-pipeline</title><p>{_PAGES[status]}</p>\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Referrer-Policy", "no-referrer")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Silenced: the request line carries the authorization code."""

        return Handler


@contextlib.contextmanager
def callback_channel(
    provider: Provider, callback_url: str | None, listen_port: int | None
) -> Iterator[LoopbackReceiver | None]:
    """Where the redirect will arrive: a loopback listener, a listener behind a public callback, or nowhere
    (the person pastes the address)."""
    if callback_url is None:
        if not provider.loopback:
            raise InputError(
                "--callback-url",
                f"{provider.login} does not accept loopback redirects; it needs a public HTTPS callback",
                f"expose this machine through a tunnel or reverse proxy, {provider.setup_hint}, and pass "
                "--callback-url https://HOST/PATH (add --listen-port PORT if the tunnel forwards to 127.0.0.1:PORT; "
                "without it you paste the address the browser lands on)",
            )
        with LoopbackReceiver(provider.loopback_path, listen_port or 0) as receiver:
            yield receiver
        return
    _check_callback_url(provider, callback_url)
    if listen_port is None:
        yield None
        return
    with LoopbackReceiver(urlsplit(callback_url).path or "/", listen_port) as receiver:
        yield receiver


def _check_callback_url(provider: Provider, callback_url: str) -> None:
    url = urlsplit(callback_url)
    schemes = ("https", "http") if provider.loopback else ("https",)
    if url.scheme not in schemes or not url.netloc:
        rule = f"{provider.login} needs an absolute {' or '.join(schemes)} URL"
        raise InputError("--callback-url", rule, provider.setup_hint)
    if url.query or url.fragment:
        raise InputError("--callback-url", "a redirect URI cannot carry a query or fragment", "remove them")
