"""HTTP client for one ComfyUI server: queueing prompts, reading `/queue` and `/history`, cancelling our own
prompts, uploading stills, downloading outputs (`/view`) and reading `/object_info` option lists.

The routes and their answers are ComfyUI's, as documented at
https://docs.comfy.org/development/comfyui-server/comms_routes (defined in
https://github.com/comfyanonymous/ComfyUI/blob/master/server.py). Every call is bounded (`connect_timeout_s` to
connect, `http_timeout_s` to read: ComfyUI answers these at once even while it renders), and every failure is a
`ComfyUIError` whose message says what failed and what to check.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from typing import Any

import requests

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.comfyui.errors import ComfyUIError, describe_rejection
from influencer_pipeline.redaction import excerpt, redact
from influencer_pipeline.retries import Backoff, Retryable, call_with_retries

log = logging.getLogger(__name__)

UPLOAD_SUBFOLDER = "influencer"  # our stills in ComfyUI's input folder, apart from the user's own


class ComfyUIClient:
    """The HTTP side of one ComfyUI server. `endpoint` is where requests go; `url` is what messages show
    (COMFYUI_URL may carry user:password@, which is redacted). A 5xx answer to `POST /prompt` is retried
    `submit_retries` times with backoff from `retry_backoff_s`; a 4xx is reported at once."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float,
        http_timeout_s: float,
        submit_retries: int,
        retry_backoff_s: float,
    ) -> None:
        if not re.match(r"^https?://[^/\s]+", url or ""):
            raise InputError(
                "COMFYUI_URL", f"{redact(url or '')!r} is not an http(s) URL", "set it like http://127.0.0.1:8188"
            )
        self.endpoint = url.rstrip("/")
        self.url = redact(self.endpoint)
        self.connect_timeout_s = connect_timeout_s
        self.http_timeout_s = http_timeout_s
        self.submit_retries = submit_retries
        self.retry_backoff_s = retry_backoff_s
        self._http = requests.Session()

    def websocket_url(self, client_id: str) -> str:
        """ComfyUI's `/ws` endpoint for `client_id`: events of prompts submitted with that id come to it."""
        scheme, rest = self.endpoint.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?clientId={client_id}"

    # ----- object_info -----------------------------------------------------------------------------------------

    def node_info(self, class_type: str) -> dict[str, Any]:
        """`/object_info/{class_type}`: the node's inputs, whose COMBO option lists say what ComfyUI has."""
        info = self._json("GET", f"/object_info/{class_type}", f"reading /object_info/{class_type}").get(class_type)
        if not isinstance(info, dict):
            raise ComfyUIError(
                f"ComfyUI at {self.url} has no {class_type} node. Is COMFYUI_URL pointing at ComfyUI, and is it a "
                "standard build?"
            )
        return info

    def list_loras(self) -> list[str]:
        """The LoRA files ComfyUI lists (LoraLoader's `lora_name` options)."""
        return combo_options(self.node_info("LoraLoader"), "LoraLoader", "lora_name")

    # ----- the prompt queue ------------------------------------------------------------------------------------

    def submit(self, graph: dict[str, Any], client_id: str, prompt_id: str, where: str) -> None:
        """Queue `graph` under our `prompt_id`; a rejected workflow (a 400, or a 200 with `node_errors`) becomes an
        error naming the node, the input and the fix."""
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        what = f"submitting {where}"
        answers: list[requests.Response] = []

        def attempt() -> requests.Response:  # a 5xx is retried (influencer_pipeline.retries); a 4xx is reported
            answers.append(self._call("POST", "/prompt", what, json_body=body))
            if answers[-1].status_code >= 500:
                raise Retryable(f"HTTP {answers[-1].status_code}")
            return answers[-1]

        def on_retry(number: int, failure: Retryable, wait: float) -> None:
            log.warning("ComfyUI answered %s to %s; retrying in %.1f s", failure.reason, what, wait)

        backoff = Backoff(first_s=self.retry_backoff_s, max_backoff_s=math.inf)
        with contextlib.suppress(Retryable):
            call_with_retries(attempt, retries=self.submit_retries, backoff=backoff, on_retry=on_retry)
        response = answers[-1]
        if response.status_code >= 500:
            raise ComfyUIError(
                f"ComfyUI failed to queue {where}: HTTP {response.status_code} on all {self.submit_retries + 1} "
                f"attempts ({_snippet(response)}). Check the ComfyUI console for the traceback"
            )
        payload = _json_body(response)
        if response.status_code == 400 or (response.status_code == 200 and payload.get("node_errors")):
            raise ComfyUIError(describe_rejection(where, payload))
        if response.status_code != 200:
            raise ComfyUIError(
                f"ComfyUI answered HTTP {response.status_code} to {what}: {_snippet(response)}. "
                "Is COMFYUI_URL pointing at ComfyUI itself (not a proxy or its UI)?"
            )

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished prompt's history entry, or None while it is queued, running or unknown."""
        entry = self._json("GET", f"/history/{prompt_id}", f"reading /history/{prompt_id}").get(prompt_id)
        return entry if isinstance(entry, dict) and entry else None

    def queued_ids(self) -> set[str]:
        """Ids of every running and pending prompt, ours or not."""
        payload = self._json("GET", "/queue", "reading the queue")
        return _queue_ids(payload, "queue_running") | _queue_ids(payload, "queue_pending")

    def loras_in_queue(self) -> set[str]:
        """Every `lora_name` in ComfyUI's running and pending prompts (`/queue` items carry the whole graph)."""
        payload = self._json("GET", "/queue", "reading the queue")
        names = set()
        for key in ("queue_running", "queue_pending"):
            for item in payload.get(key) or []:
                graph = item[2] if isinstance(item, list) and len(item) > 2 and isinstance(item[2], dict) else {}
                for node in graph.values():
                    value = (node.get("inputs") or {}).get("lora_name") if isinstance(node, dict) else None
                    if isinstance(value, str):
                        names.add(value)
        return names

    def cancel(self, ids: list[str]) -> tuple[list[str], list[str]]:
        """Delete our pending prompts, then interrupt ours only if it is the one running (by id, so a server
        that honours the id never stops another client's work); returns (deleted, interrupted). Never raises: it
        runs while failing already."""
        if not ids:
            return [], []
        quick = self.connect_timeout_s
        try:
            self._call("POST", "/queue", "cancelling our queued prompts", json_body={"delete": ids}, read_timeout=quick)
            running = _queue_ids(self._json("GET", "/queue", "reading the queue", read_timeout=quick), "queue_running")
            interrupted = [prompt_id for prompt_id in ids if prompt_id in running]
            for prompt_id in interrupted:
                body = {"prompt_id": prompt_id}
                self._call("POST", "/interrupt", "interrupting our prompt", json_body=body, read_timeout=quick)
        except ComfyUIError as exc:
            log.warning("could not cancel ComfyUI prompts %s: %s", ids, exc)
            return [], []
        return [prompt_id for prompt_id in ids if prompt_id not in running], interrupted

    # ----- files -----------------------------------------------------------------------------------------------

    def upload_image(self, png: bytes, name: str, where: str) -> str:
        """Put a still in ComfyUI's input folder; returns the name `LoadImage` takes, which is the one ComfyUI
        answers with (it renames a file whose name exists with other content)."""
        files = {"image": (name, png, "image/png")}
        form = {"type": "input", "subfolder": UPLOAD_SUBFOLDER, "overwrite": "false"}
        response = self._call("POST", "/upload/image", f"uploading the still for {where}", files=files, data=form)
        if response.status_code != 200:
            raise ComfyUIError(
                f"ComfyUI answered HTTP {response.status_code} to uploading the still for {where}: "
                f"{_snippet(response)}. Check that ComfyUI's input folder is writable and the upload size limit"
            )
        payload = _json_body(response)
        if not isinstance(payload.get("name"), str) or not payload["name"]:
            raise ComfyUIError(f"ComfyUI's answer to uploading the still for {where} has no file name: {payload}")
        return "/".join(part for part in (str(payload.get("subfolder") or ""), payload["name"]) if part)

    def download(self, output: dict[str, Any], where: str) -> bytes:
        """An output file that a history entry names (`filename`, `subfolder`, `type`), through `/view`."""
        params = {"filename": output["filename"], "subfolder": output.get("subfolder", ""), "type": output.get("type")}
        response = self._call("GET", "/view", f"downloading {output['filename']} for {where}", params=params)
        if response.status_code != 200:
            raise ComfyUIError(
                f"ComfyUI answered HTTP {response.status_code} to /view for {output['filename']!r} ({where}). "
                "Was the output folder cleaned while the run was going?"
            )
        return response.content

    # ----- HTTP ------------------------------------------------------------------------------------------------

    def _json(self, method: str, path: str, what: str, read_timeout: float | None = None) -> dict[str, Any]:
        response = self._call(method, path, what, read_timeout=read_timeout)
        if response.status_code != 200:
            raise ComfyUIError(f"ComfyUI answered HTTP {response.status_code} to {what}: {_snippet(response)}")
        return _json_body(response)

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        files: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> requests.Response:
        """One bounded HTTP call; connection problems and timeouts become errors that say what to check."""
        timeout = (self.connect_timeout_s, read_timeout or self.http_timeout_s)
        try:
            return self._http.request(
                method, self.endpoint + path, json=json_body, params=params, files=files, data=data, timeout=timeout
            )
        except requests.ConnectTimeout as exc:
            raise ComfyUIError(self._unreachable(what, f"no answer within {self.connect_timeout_s:g} s")) from exc
        except requests.ConnectionError as exc:
            raise ComfyUIError(self._unreachable(what, _reason(exc))) from exc
        except requests.Timeout as exc:
            raise ComfyUIError(
                f"ComfyUI at {self.url} did not answer {what} within {timeout[1]:g} s (it answers these at once "
                "even while rendering): it is frozen or overloaded. Check its console and restart it if it hangs"
            ) from exc

    def _unreachable(self, what: str, reason: str) -> str:
        return (
            f"cannot reach ComfyUI at {self.url} while {what} ({reason}). Check COMFYUI_URL and that ComfyUI is "
            f"running and listening there: `curl {self.url}/system_stats` must answer (start ComfyUI with "
            "--listen when it runs on another machine)"
        )


def combo_options(node_info: dict[str, Any], class_type: str, input_name: str) -> list[str]:
    """The option list of a COMBO input, in either `/object_info` shape: V1 `[[options], {...}]` or
    V3 `["COMBO", {"options": [...]}]`."""
    inputs = node_info.get("input") or {}
    spec = {**(inputs.get("required") or {}), **(inputs.get("optional") or {})}.get(input_name)
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return [str(option) for option in spec[0]]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            return [str(option) for option in spec[1].get("options", [])]
    raise ComfyUIError(
        f"ComfyUI's /object_info/{class_type} has no option list for {input_name!r}; this ComfyUI version is not "
        "supported"
    )


def _queue_ids(payload: dict[str, Any], key: str) -> set[str]:
    """Prompt ids in one list of a `/queue` answer; each item is [number, prompt_id, graph, ...]."""
    return {str(item[1]) for item in payload.get(key) or [] if isinstance(item, list) and len(item) > 1}


def _json_body(response: requests.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise ComfyUIError(
            f"ComfyUI answered {redact(response.url)} with something that is not a JSON object "
            f"({_snippet(response)!r}). Is COMFYUI_URL pointing at ComfyUI?"
        )
    return payload


def _snippet(response: requests.Response) -> str:
    """The start of a body, on one line, for error messages."""
    return " ".join(excerpt(response.text, 200).split())


def _reason(exc: requests.ConnectionError) -> str:
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else excerpt(text, 200)
