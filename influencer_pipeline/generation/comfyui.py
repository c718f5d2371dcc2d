"""The ComfyUI image engine: HTTP + WebSocket client for a ComfyUI server (contract: reference Part A).

Throughput comes from keeping ComfyUI's single-worker queue full: up to `max_in_flight` of our prompts are
queued at once and the next one is submitted the moment one finishes, before its image is downloaded, so the
GPU never waits for this client. Completion is read from the WebSocket (`executing` with `node: null` is the
only race-free signal); when the socket never connects or drops, `/history/{id}` polling takes over, with
`/queue` telling "still queued" from "lost". Every wait is bounded, and every failure becomes one
`ComfyUIError` whose message says what failed and what to do. When the run is stopped (or fails) only our
own prompts are cancelled: pending ones deleted from the queue, a running one interrupted by id.

Image-to-video (`animate`) goes through the same queue: each still is uploaded to ComfyUI's input folder under
its content hash (so a retry reuses the file), the `svd-img2vid` template is filled, and the animated WEBP that
`SaveAnimatedWEBP` writes comes back as bytes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import queue
import re
import secrets
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import websocket

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import ClipRequest, GeneratedClip, GeneratedImage, GenerationRequest
from influencer_pipeline.generation.model_family import (
    FAMILIES,
    check_lora_family,
    checkpoint_family,
    is_svd_checkpoint,
    read_header,
)
from influencer_pipeline.generation.workflows import (
    TEMPLATES_DIR,
    ServerChoices,
    VideoRequest,
    WorkflowTemplate,
    build_img2vid,
    build_txt2img,
    load_template,
    template_family,
)
from influencer_pipeline.redaction import excerpt, redact
from influencer_pipeline.retries import Backoff, Retryable, call_with_retries

log = logging.getLogger(__name__)

LORA_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pt2", ".bin", ".pth", ".sft")
LORA_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")
SEED_LIMIT = 2**53  # random seeds stay exact in JSON read by JavaScript (n8n, the ComfyUI UI)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UPLOAD_SUBFOLDER = "influencer"  # our stills in ComfyUI's input folder, apart from the user's own
TICK_S = 0.1  # how often the wait loop checks should_stop and its deadline
SAFETY_POLL_FACTOR = 10  # with a live socket, /history is still polled this many poll intervals apart
DEPLOYED_LEDGER = ".influencer-deployed.json"  # in the loras folder; ComfyUI lists only model extensions


class ComfyUIError(RuntimeError):
    """Anything that went wrong talking to ComfyUI; the message names what failed and what to do."""


@dataclass
class _Job:
    index: int
    request: GenerationRequest | ClipRequest
    seed: int
    graph: dict[str, Any]
    prompt_id: str = ""

    @property
    def where(self) -> str:
        return _where(self.index) if isinstance(self.request, GenerationRequest) else _clip_where(self.index)


class ComfyUIEngine:
    """`ImageEngine` backed by a ComfyUI server, with `loras_dir` a folder ComfyUI reads as `models/loras`.

    `timeout_s` bounds only the wait for the *next* image to finish (so it scales with the batch and may be long);
    `http_timeout_s` bounds every HTTP read (queue, history, object_info, view, upload: ComfyUI answers those at
    once even while it renders, so a frozen server is noticed within it); `connect_timeout_s` bounds every
    connection attempt; `max_in_flight` is how many of our prompts may wait in ComfyUI's queue at once (enough to
    hide our latency, few enough to leave room for other clients). `checkpoints_dir` is ComfyUI's
    models/checkpoints when this host can read it (default: the `checkpoints` folder beside `loras_dir`); it is
    only used to read checkpoint headers (base-model family, SVD or not). A group's older deployed LoRA is removed
    once no queued prompt uses it and it was last deployed more than `retire_after_s` ago (a run that deployed it
    may still be about to submit prompts that use it: only `max_in_flight` of them are in ComfyUI's queue).
    """

    name = "comfyui"

    def __init__(
        self,
        url: str,
        loras_dir: Path | None,
        checkpoint: str,
        template: str = "sd15-lora-txt2img",
        timeout_s: float = 600,
        connect_timeout_s: float = 10,
        max_in_flight: int = 4,
        *,
        http_timeout_s: float = 30.0,
        checkpoints_dir: Path | None = None,
        retire_after_s: float = 6 * 3600.0,
        poll_interval_s: float = 1.0,
        deploy_timeout_s: float = 60.0,
        submit_retries: int = 3,
        retry_backoff_s: float = 1.0,
        templates_dir: Path = TEMPLATES_DIR,
        video_checkpoint: str = "svd_xt.safetensors",
        video_template: str = "svd-img2vid",
    ) -> None:
        if not re.match(r"^https?://[^/\s]+", url or ""):
            raise InputError(
                "COMFYUI_URL", f"{redact(url or '')!r} is not an http(s) URL", "set it like http://127.0.0.1:8188"
            )
        if max_in_flight < 1:
            raise InputError("max_in_flight", f"must be at least 1, got {max_in_flight}", "use 2-8")
        self.endpoint = url.rstrip("/")  # what requests go to
        self.url = redact(self.endpoint)  # what messages show: COMFYUI_URL may carry user:password@
        self.loras_dir = Path(loras_dir) if loras_dir is not None else None
        self.checkpoint = checkpoint
        self.template = load_template(template, templates_dir)
        self.video_checkpoint = video_checkpoint
        self._video_template = (video_template, templates_dir)
        self.timeout_s = timeout_s
        self.http_timeout_s = http_timeout_s
        self.retire_after_s = retire_after_s
        self.connect_timeout_s = connect_timeout_s
        if checkpoints_dir is None and self.loras_dir is not None:
            checkpoints_dir = self.loras_dir.parent / "checkpoints"
        self.checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir is not None else None
        self.max_in_flight = max_in_flight
        self.poll_interval_s = poll_interval_s
        self.deploy_timeout_s = deploy_timeout_s
        self.submit_retries = submit_retries
        self.retry_backoff_s = retry_backoff_s
        self._http = requests.Session()

    @functools.cached_property
    def video_template(self) -> WorkflowTemplate:
        """Loaded on first use: an engine that only makes stills needs no video template in its folder."""
        return load_template(*self._video_template)

    # ----- LoRA deployment -------------------------------------------------------------------------------------

    def deploy_lora(self, local_path: Path, name: str, group: str | None = None) -> str:
        """Copy the LoRA into the shared folder (atomically, skipped when identical) and wait until ComfyUI
        lists it, so a generation that follows can never fail validation on a missing `lora_name`.

        Before anything is copied, the LoRA's base-model family (from its safetensors header) must match this
        engine's checkpoint: ComfyUI itself would only log shape errors and render without it. With `group`
        (the persona), older files deployed for the same group are removed once no queued prompt uses them, so
        retraining does not pile files up in ComfyUI's loras folder; what is deployed is recorded in
        `<loras folder>/.influencer-deployed.json`.
        """
        source = Path(local_path)
        if not source.is_file():
            raise InputError(str(source), "the LoRA file does not exist", "train the LoRA first or fix the path")
        file_name = _lora_file_name(name, source)
        expected = self.lora_family()
        if source.suffix not in (".safetensors", ".sft"):
            log.warning("%s is not a safetensors file: its base-model family cannot be checked", source)
        elif expected is not None:
            check_lora_family(source, *expected)
        else:
            log.warning(
                "cannot tell which base model %s (template %s) is for, so the LoRA family is not checked: declare "
                '"_meta": {"family": "sd1"|"sd2"|"sdxl"} on the template\'s checkpoint loader',
                self.checkpoint,
                self.template.name,
            )
        folder = self._shared_loras_dir()
        target = folder / file_name
        if _same_content(source, target):
            log.info("LoRA %s is already in %s with identical content", file_name, folder)
        else:
            if target.exists():
                log.warning(
                    "replacing LoRA %s with different content: ComfyUI keeps serving the weights it already loaded "
                    'under this name until its cache is cleared (POST /free {"free_memory": true}); prefer a new '
                    "name per training run",
                    file_name,
                )
            _atomic_copy(source, target)
        self._wait_until_listed(file_name, folder)
        self._record_deployment(folder, file_name, group, source)
        return file_name

    def lora_family(self) -> tuple[str, str] | None:
        """(family, what has it) that a deployed LoRA must match: the checkpoint's own header when this host can
        read the file, else the template's declared family; None when neither says."""
        declared = template_family(self.template)
        local = self._local_checkpoint(self.checkpoint)
        found = checkpoint_family(read_header(local)) if local is not None else None
        if found is not None and found.name is not None:
            if declared is not None and declared != found.name:
                raise InputError(
                    "COMFYUI_CHECKPOINT",
                    f"{self.checkpoint!r} is a {found.label} checkpoint ({found.evidence}), but the workflow "
                    f"template {self.template.name!r} is for {FAMILIES[declared]}",
                    "set COMFYUI_TEMPLATE to a template of the checkpoint's family (sd15-lora-txt2img for SD1.x, "
                    "sdxl-lora-txt2img for SDXL) or choose another checkpoint",
                )
            return found.name, f"COMFYUI_CHECKPOINT {self.checkpoint!r}"
        if declared is not None:
            return declared, f"COMFYUI_CHECKPOINT {self.checkpoint!r} (template {self.template.name!r})"
        return None

    def _local_checkpoint(self, name: str) -> Path | None:
        """ComfyUI's checkpoint file when this host sees it (a shared models folder), for reading its header."""
        if self.checkpoints_dir is None or not name.endswith((".safetensors", ".sft")):
            return None
        path = self.checkpoints_dir / name
        return path if path.is_file() else None

    def _record_deployment(self, folder: Path, file_name: str, group: str | None, source: Path) -> None:
        """Record the file in the folder's deployment ledger, then remove this group's older deployed files that
        no queued or running prompt uses. Files we did not deploy (not in the ledger) are never touched."""
        with _ledger_lock(folder):
            ledger = _read_ledger(folder)
            ledger[file_name] = {
                "group": group,
                "sha256": _sha256(source),
                "deployed_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            }
            now = dt.datetime.now(dt.UTC)
            older = [
                name
                for name, entry in ledger.items()
                if group is not None and entry.get("group") == group and name != file_name
                if _age_s(entry, now) >= self.retire_after_s
            ]
            in_use: set[str] = set()
            if older:
                try:
                    in_use = self._loras_in_queue()
                except ComfyUIError as exc:
                    log.warning("kept older LoRAs of %s (cannot read ComfyUI's queue: %s)", group, exc)
                    in_use = set(older)
            for old in older:
                if old in in_use:
                    log.info("keeping %s: a queued or running ComfyUI prompt uses it; removed on a later deploy", old)
                    continue
                (folder / old).unlink(missing_ok=True)
                del ledger[old]
                log.info("removed %s from %s (replaced by %s)", old, folder, file_name)
            _write_ledger(folder, ledger)

    def deployed(self) -> dict[str, dict[str, Any]]:
        """The deployment ledger: file name -> {group, sha256, deployed_at}."""
        return _read_ledger(self._shared_loras_dir())

    def _loras_in_queue(self) -> set[str]:
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

    def _shared_loras_dir(self) -> Path:
        if self.loras_dir is None:
            raise ComfyUIError(
                "cannot deploy a LoRA: no shared loras folder is configured. Set loras_dir to a folder that "
                "ComfyUI reads as models/loras (mounted or shared with the ComfyUI host)"
            )
        if not self.loras_dir.is_dir():
            raise ComfyUIError(
                f"the shared loras folder {self.loras_dir} does not exist here. Mount ComfyUI's models/loras "
                "folder at that path, or fix loras_dir"
            )
        return self.loras_dir

    def _wait_until_listed(self, file_name: str, folder: Path) -> None:
        deadline = time.monotonic() + self.deploy_timeout_s
        while True:
            listed = self._list_loras()
            if file_name in listed:
                return
            if time.monotonic() >= deadline:
                shown = ", ".join(listed[:10]) or "none"
                raise ComfyUIError(
                    f"ComfyUI at {self.url} does not list the LoRA {file_name!r} {self.deploy_timeout_s:g} s after "
                    f"it was copied to {folder} (it lists {len(listed)}: {shown}). Check the shared folder path: "
                    "it must be the folder ComfyUI reads as models/loras (see its extra_model_paths.yaml)"
                )
            time.sleep(min(self.poll_interval_s, max(deadline - time.monotonic(), 0.0)))

    def _list_loras(self) -> list[str]:
        return combo_options(self._node_info("LoraLoader"), "LoraLoader", "lora_name")

    # ----- generation ------------------------------------------------------------------------------------------

    def generate(
        self,
        requests: list[GenerationRequest],
        progress: Callable[[int, int], None] = lambda done, total: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[GeneratedImage]:
        """Render every request (all validated before the first is submitted); results in request order."""
        if not requests:
            return []
        choices = self._server_choices(need_loras=any(r.loras for r in requests))
        jobs = [self._prepare(index, request, choices) for index, request in enumerate(requests)]
        return self._execute(jobs, progress, should_stop)

    def check_requests(self, requests: list[GenerationRequest]) -> None:
        """Validate every request against the template and ComfyUI's samplers, schedulers and checkpoints, but not
        its LoRA list: this runs before the LoRA is deployed, so a bad size never copies a LoRA."""
        choices = self._server_choices(need_loras=False)
        for index, request in enumerate(requests):
            seed = request.seed if request.seed is not None else 0
            build_txt2img(
                self.template, request, seed=seed, checkpoint=self.checkpoint, choices=choices, where=_where(index)
            )

    def animate(
        self,
        clips: list[ClipRequest],
        progress: Callable[[int, int], None] = lambda done, total: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[GeneratedClip]:
        """Animate each still with the image-to-video template; clips (animated WEBP) in request order.
        Every request is validated against the server before the first still is uploaded."""
        if not clips:
            return []
        self.check_video_checkpoint()
        sampler = self._node_info("KSampler")
        loader = "ImageOnlyCheckpointLoader"
        choices = ServerChoices(
            samplers=combo_options(sampler, "KSampler", "sampler_name"),
            schedulers=combo_options(sampler, "KSampler", "scheduler"),
            checkpoints=combo_options(self._node_info(loader), loader, "ckpt_name"),
        )
        seeded = [(clip, clip.seed if clip.seed is not None else secrets.randbelow(SEED_LIMIT)) for clip in clips]
        for index, (clip, seed) in enumerate(seeded):  # validated with the name the upload will normally get
            self._video_graph(index, clip, seed, f"{UPLOAD_SUBFOLDER}/{_content_name(clip.still_png)}", choices)
        jobs = []
        for index, (clip, seed) in enumerate(seeded):
            uploaded = self.upload_image(clip.still_png, _content_name(clip.still_png), _clip_where(index))
            jobs.append(_Job(index, clip, seed, self._video_graph(index, clip, seed, uploaded, choices)))
        return self._execute(jobs, progress, should_stop)

    def check_video_checkpoint(self) -> None:
        """Refuse a video checkpoint that is not Stable Video Diffusion before anything is queued.

        ComfyUI's `ImageOnlyCheckpointLoader` lists every checkpoint and loads any of them; only an SVD checkpoint
        holds the CLIP-vision encoder that `SVD_img2vid_Conditioning` needs, so another one fails mid-run with
        `'NoneType' object has no attribute 'encode_image'`. The rule: (1) the image checkpoint is never an SVD
        one; (2) when this host can read the file, its header must show SVD (CLIP-vision weights and temporal
        layers); (3) otherwise its name must say svd, as every published SVD file does (svd.safetensors,
        svd_xt.safetensors, svd_xt_1_1.safetensors).
        """
        name = self.video_checkpoint
        fix = (
            "set COMFYUI_VIDEO_CHECKPOINT to a Stable Video Diffusion checkpoint in ComfyUI's models/checkpoints "
            "(svd_xt.safetensors from stabilityai/stable-video-diffusion-img2vid-xt), or set img2vid_clips to 0"
        )
        if name == self.checkpoint:
            raise InputError(
                "COMFYUI_VIDEO_CHECKPOINT", f"{name!r} is the image checkpoint (COMFYUI_CHECKPOINT), not SVD", fix
            )
        local = self._local_checkpoint(name)
        if local is not None:
            if not is_svd_checkpoint(read_header(local)):
                raise InputError(
                    "COMFYUI_VIDEO_CHECKPOINT",
                    f"{local} is not a Stable Video Diffusion checkpoint: it has no CLIP-vision encoder and temporal "
                    "layers, so ComfyUI's SVD conditioning would fail ('NoneType' object has no attribute "
                    "'encode_image')",
                    fix,
                )
            return
        if "svd" not in name.lower():
            raise InputError(
                "COMFYUI_VIDEO_CHECKPOINT",
                f"{name!r} does not look like a Stable Video Diffusion checkpoint (its name does not say svd, and "
                f"the file is not readable here to check its header{self._checkpoints_dir_note()}); ComfyUI would "
                "fail on it with 'NoneType' object has no attribute 'encode_image'",
                f"{fix}; a renamed SVD file must keep 'svd' in its name unless this host can read it",
            )

    def _checkpoints_dir_note(self) -> str:
        return f" under {self.checkpoints_dir}" if self.checkpoints_dir is not None else ""

    def _video_graph(
        self, index: int, clip: ClipRequest, seed: int, image: str, choices: ServerChoices
    ) -> dict[str, Any]:
        request = VideoRequest(
            image=image,
            seed=seed,
            steps=clip.steps,
            width=clip.width,
            height=clip.height,
            video_frames=clip.frames,
            motion_bucket_id=clip.motion,
            fps=clip.fps,
        )
        return build_img2vid(
            self.video_template, request, checkpoint=self.video_checkpoint, choices=choices, where=_clip_where(index)
        )

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

    def _execute(
        self, jobs: list[_Job], progress: Callable[[int, int], None], should_stop: Callable[[], bool]
    ) -> list[Any]:
        client_id = uuid.uuid4().hex
        with _Watcher(self, client_id) as watcher:
            return self._run(jobs, client_id, watcher, progress, should_stop)

    def _server_choices(self, need_loras: bool) -> ServerChoices:
        sampler = self._node_info("KSampler")
        return ServerChoices(
            samplers=combo_options(sampler, "KSampler", "sampler_name"),
            schedulers=combo_options(sampler, "KSampler", "scheduler"),
            checkpoints=combo_options(self._node_info("CheckpointLoaderSimple"), "CheckpointLoaderSimple", "ckpt_name"),
            loras=self._list_loras() if need_loras else None,
        )

    def _prepare(self, index: int, request: GenerationRequest, choices: ServerChoices) -> _Job:
        seed = request.seed if request.seed is not None else secrets.randbelow(SEED_LIMIT)
        graph = build_txt2img(
            self.template, request, seed=seed, checkpoint=self.checkpoint, choices=choices, where=_where(index)
        )
        return _Job(index, request, seed, graph)

    def _run(
        self,
        jobs: list[_Job],
        client_id: str,
        watcher: _Watcher,
        progress: Callable[[int, int], None],
        should_stop: Callable[[], bool],
    ) -> list[Any]:
        pending = deque(jobs)
        in_flight: dict[str, _Job] = {}
        results: list[GeneratedImage | GeneratedClip | None] = [None] * len(jobs)
        done = 0
        deadline = time.monotonic() + self.timeout_s
        try:
            while pending or in_flight:
                if should_stop():
                    raise self._stop_error(in_flight, done, len(jobs))
                self._fill_queue(pending, in_flight, client_id)
                finished = watcher.wait(in_flight, TICK_S)
                if not finished:
                    if time.monotonic() > deadline:
                        raise self._timeout_error(in_flight)
                    continue
                finished_jobs = [(in_flight.pop(prompt_id), entry) for prompt_id, entry in finished]
                self._fill_queue(pending, in_flight, client_id)  # before downloading: keep the GPU busy
                for job, entry in finished_jobs:
                    results[job.index] = self._collect(job, entry)
                    done += 1
                    progress(done, len(jobs))
                deadline = time.monotonic() + self.timeout_s
        except BaseException:
            self._cancel(in_flight)
            raise
        return [result for result in results if result is not None]

    def _stop_error(self, in_flight: dict[str, _Job], done: int, total: int) -> ComfyUIError:
        """Cancel our prompts (the Dagster run was terminated), then say what was cancelled."""
        deleted, interrupted = self._cancel(in_flight)
        return ComfyUIError(
            f"generation stopped because the run was terminated, after {done} of {total} images: removed "
            f"{len(deleted)} of our prompts from ComfyUI's queue and interrupted {len(interrupted)} running one(s); "
            "other clients' prompts were left alone"
        )

    def _timeout_error(self, in_flight: dict[str, _Job]) -> ComfyUIError:
        """Cancel our prompts (no image finished in time), then say what we waited for and what to check."""
        waiting = ", ".join(f"{job.where} (prompt {prompt_id})" for prompt_id, job in in_flight.items())
        deleted, interrupted = self._cancel(in_flight)
        return ComfyUIError(
            f"no image finished within {self.timeout_s:g} s while waiting for {waiting}; ComfyUI at {self.url} may be "
            f"stuck or busy with other work. We cancelled {len(deleted)} queued and {len(interrupted)} running "
            "prompt(s) of ours. Check the ComfyUI console and its queue (GET /queue), or raise timeout_s for slow "
            "models"
        )

    def _fill_queue(self, pending: deque[_Job], in_flight: dict[str, _Job], client_id: str) -> None:
        """Submit until `max_in_flight` of ours are queued; a prompt is tracked before it is sent, so one that
        ComfyUI queued despite `node_errors` is still cancelled."""
        while pending and len(in_flight) < self.max_in_flight:
            job = pending.popleft()
            job.prompt_id = str(uuid.uuid4())
            in_flight[job.prompt_id] = job
            self._submit(job, client_id)

    def _submit(self, job: _Job, client_id: str) -> None:
        body = {"prompt": job.graph, "client_id": client_id, "prompt_id": job.prompt_id}
        what = f"submitting {job.where}"
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
                f"ComfyUI failed to queue {job.where}: HTTP {response.status_code} on all {self.submit_retries + 1} "
                f"attempts ({_snippet(response)}). Check the ComfyUI console for the traceback"
            )
        payload = _json_body(response)
        if response.status_code == 400 or (response.status_code == 200 and payload.get("node_errors")):
            raise ComfyUIError(describe_rejection(job.where, payload))
        if response.status_code != 200:
            raise ComfyUIError(
                f"ComfyUI answered HTTP {response.status_code} to {what}: {_snippet(response)}. "
                "Is COMFYUI_URL pointing at ComfyUI itself (not a proxy or its UI)?"
            )

    def _collect(self, job: _Job, entry: dict[str, Any]) -> GeneratedImage | GeneratedClip:
        """Turn a finished prompt's history entry into the image, or into the error it ended with."""
        status = entry.get("status") or {}
        messages = [m for m in status.get("messages") or [] if isinstance(m, list) and len(m) == 2]
        for kind, data in messages:
            if kind == "execution_error":
                raise ComfyUIError(describe_execution_error(job.where, job.prompt_id, data))
        for kind, data in messages:
            if kind == "execution_interrupted":
                raise ComfyUIError(
                    f"ComfyUI interrupted {job.where} (prompt {job.prompt_id}) at node {data.get('node_id')} "
                    f"({data.get('node_type')}): someone cancelled it in ComfyUI or called /interrupt. "
                    "Run the step again"
                )
        if status.get("status_str") == "error":
            raise ComfyUIError(
                f"ComfyUI reports {job.where} (prompt {job.prompt_id}) as failed without an error message. "
                "Check the ComfyUI console"
            )
        image = first_output_file(entry.get("outputs") or {})
        if isinstance(job.request, ClipRequest):
            return self._collect_clip(job, image)
        if image is None:
            raise ComfyUIError(
                f"ComfyUI finished {job.where} (prompt {job.prompt_id}) without an output image. The workflow "
                f"template {self.template.name!r} must end in a SaveImage node"
            )
        png = self._download(image, job.where)
        if not png.startswith(PNG_SIGNATURE):
            raise ComfyUIError(
                f"ComfyUI's output {image['filename']!r} for {job.where} is not a PNG. The workflow template "
                f"{self.template.name!r} must save with SaveImage"
            )
        return GeneratedImage(png=png, params=self._params(job))

    def _collect_clip(self, job: _Job, output: dict[str, Any] | None) -> GeneratedClip:
        webp = self._download(output, job.where) if output is not None else b""
        if not (webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"):
            found = repr(output["filename"]) if output is not None else "nothing"
            raise ComfyUIError(
                f"ComfyUI's output for {job.where} (prompt {job.prompt_id}) is {found}, not an animated WEBP. The "
                f"workflow template {self.video_template.name!r} must end in a SaveAnimatedWEBP node"
            )
        clip = job.request
        assert isinstance(clip, ClipRequest)
        params = {
            "seed": job.seed,
            "steps": clip.steps,
            "width": clip.width,
            "height": clip.height,
            "frames": clip.frames,
            "fps": clip.fps,
            "motion": clip.motion,
            "checkpoint": self.video_checkpoint,
            "engine": self.name,
            "workflow": self.video_template.name,
            "workflow_hash": self.video_template.hash,
            "prompt_id": job.prompt_id,
        }
        return GeneratedClip(webp=webp, params=params)

    def _download(self, image: dict[str, Any], where: str) -> bytes:
        params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image.get("type")}
        response = self._call("GET", "/view", f"downloading {image['filename']} for {where}", params=params)
        if response.status_code != 200:
            raise ComfyUIError(
                f"ComfyUI answered HTTP {response.status_code} to /view for {image['filename']!r} ({where}). "
                "Was the output folder cleaned while the run was going?"
            )
        return response.content

    def _params(self, job: _Job) -> dict[str, Any]:
        request = job.request
        assert isinstance(request, GenerationRequest)
        return {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": job.seed,
            "steps": request.steps,
            "cfg": request.cfg,
            "sampler": request.sampler,
            "scheduler": request.scheduler,
            "width": request.width,
            "height": request.height,
            "loras": [{"name": lora.name, "strength": lora.strength} for lora in request.loras],
            "checkpoint": self.checkpoint,
            "engine": self.name,
            "workflow": self.template.name,
            "workflow_hash": self.template.hash,
            "prompt_id": job.prompt_id,
        }

    def _cancel(self, in_flight: dict[str, _Job]) -> tuple[list[str], list[str]]:
        """Delete our pending prompts, then interrupt ours only if it is the one running (by id, so a server
        that honours the id never stops another client's work). Never raises: it runs while failing already."""
        ids = list(in_flight)
        in_flight.clear()
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

    # ----- HTTP ------------------------------------------------------------------------------------------------

    def _node_info(self, class_type: str) -> dict[str, Any]:
        info = self._json("GET", f"/object_info/{class_type}", f"reading /object_info/{class_type}").get(class_type)
        if not isinstance(info, dict):
            raise ComfyUIError(
                f"ComfyUI at {self.url} has no {class_type} node. Is COMFYUI_URL pointing at ComfyUI, and is it a "
                "standard build?"
            )
        return info

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished prompt's history entry, or None while it is queued, running or unknown."""
        entry = self._json("GET", f"/history/{prompt_id}", f"reading /history/{prompt_id}").get(prompt_id)
        return entry if isinstance(entry, dict) and entry else None

    def queued_ids(self) -> set[str]:
        payload = self._json("GET", "/queue", "reading the queue")
        return _queue_ids(payload, "queue_running") | _queue_ids(payload, "queue_pending")

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


class _Watcher:
    """Reports which of our prompts finished: from WebSocket frames while the socket is up, by polling
    `/history` otherwise (and now and then anyway, in case a frame was lost)."""

    def __init__(self, engine: ComfyUIEngine, client_id: str) -> None:
        self._engine = engine
        self._client_id = client_id
        self._frames: queue.Queue[dict[str, Any] | Exception] = queue.Queue()
        self._closing = threading.Event()
        self._socket: websocket.WebSocket | None = None
        self._reader: threading.Thread | None = None
        self._live = False
        self._due: set[str] = set()
        self._next_poll = 0.0  # a socket that never connects means: poll from the start

    def __enter__(self) -> _Watcher:
        scheme, rest = self._engine.endpoint.split("://", 1)
        url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?clientId={self._client_id}"
        try:
            self._socket = websocket.create_connection(url, timeout=self._engine.connect_timeout_s)
        except (websocket.WebSocketException, OSError) as exc:
            log.warning("ComfyUI WebSocket %s unavailable (%s); following progress by polling /history", url, exc)
            return self
        self._socket.settimeout(TICK_S)
        self._live = True
        self._next_poll = time.monotonic() + self._engine.poll_interval_s * SAFETY_POLL_FACTOR
        self._reader = threading.Thread(target=self._read, args=(self._socket,), daemon=True, name="comfyui-ws")
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Abort rather than close politely: the reader wakes at once instead of at its next recv timeout."""
        self._closing.set()
        if self._socket is not None:
            self._socket.abort()
        if self._reader is not None:
            self._reader.join(timeout=2 * TICK_S + 1)
        if self._socket is not None:
            self._socket.shutdown()

    def _read(self, sock: websocket.WebSocket) -> None:
        """Reader thread: a recv timeout is only a chance to check for shutdown (ComfyUI can be silent for
        minutes while it loads a model); any other failure ends the socket and switches to polling."""
        while not self._closing.is_set():
            try:
                frame = sock.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError) as exc:
                self._frames.put(exc)
                return
            if isinstance(frame, str):  # binary frames are previews; not needed here
                try:
                    self._frames.put(json.loads(frame))
                except json.JSONDecodeError:
                    log.debug("ignoring a non-JSON ComfyUI frame")

    def wait(self, in_flight: dict[str, _Job], timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """Wait up to `timeout` for news; returns (prompt_id, history entry) for prompts that finished."""
        self._take_frames(in_flight, timeout)
        now = time.monotonic()
        if now >= self._next_poll:
            self._due.update(in_flight)
            factor = SAFETY_POLL_FACTOR if self._live else 1
            self._next_poll = now + self._engine.poll_interval_s * factor
        return self._poll(in_flight)

    def _take_frames(self, in_flight: dict[str, _Job], timeout: float) -> None:
        """Block for the first frame (it is also the loop's pause when polling), then drain the rest."""
        block = True
        while True:
            try:
                frame = self._frames.get(timeout=timeout) if block else self._frames.get_nowait()
            except queue.Empty:
                return
            block = False
            if isinstance(frame, Exception):
                log.warning(
                    "ComfyUI WebSocket dropped (%s); following progress by polling /history every %g s",
                    frame,
                    self._engine.poll_interval_s,
                )
                self._live = False
                self._next_poll = 0.0  # frames may have been lost: look now
                continue
            self._handle(frame, in_flight)

    def _handle(self, frame: Any, in_flight: dict[str, _Job]) -> None:
        data = frame.get("data") if isinstance(frame, dict) and isinstance(frame.get("data"), dict) else {}
        prompt_id = data.get("prompt_id")
        if prompt_id not in in_flight:
            return
        kind = frame.get("type")
        if kind == "executing" and data.get("node") is None:
            self._due.add(prompt_id)  # the history entry is written before this frame is sent
        elif kind in ("execution_error", "execution_interrupted"):
            self._due.add(prompt_id)
        elif kind == "progress":
            log.debug("%s: step %s/%s", in_flight[prompt_id].where, data.get("value"), data.get("max"))

    def _poll(self, in_flight: dict[str, _Job]) -> list[tuple[str, dict[str, Any]]]:
        """Read history for due prompts; one that is neither in history nor queued is lost (restart, or
        deleted by someone else) and would otherwise be waited for until the timeout."""
        due = [prompt_id for prompt_id in self._due if prompt_id in in_flight]
        self._due.clear()
        finished: list[tuple[str, dict[str, Any]]] = []
        unfinished = []
        for prompt_id in due:
            entry = self._engine.history_entry(prompt_id)
            if entry is not None:
                finished.append((prompt_id, entry))
            else:
                unfinished.append(prompt_id)
        queued = self._engine.queued_ids() if unfinished else set()
        for prompt_id in unfinished:
            if prompt_id in queued:
                continue
            entry = self._engine.history_entry(prompt_id)  # it may have finished between the two reads
            if entry is None:
                raise ComfyUIError(
                    f"ComfyUI no longer knows prompt {prompt_id} ({in_flight[prompt_id].where}): it is neither "
                    "queued nor in its history. ComfyUI was probably restarted (history lives in memory) or the "
                    "prompt was deleted from its queue. Run the step again"
                )
            finished.append((prompt_id, entry))
        return finished


# ----- helpers -------------------------------------------------------------------------------------------------


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


def describe_rejection(where: str, payload: dict[str, Any]) -> str:
    """One message for a 400 (or a 200 with `node_errors`): which node class, which input, why, and the fix."""
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    node_errors = payload.get("node_errors") if isinstance(payload.get("node_errors"), dict) else {}
    problems = []
    inputs = set()
    for node_id, entry in node_errors.items():
        for item in entry.get("errors", []):
            input_name = (item.get("extra_info") or {}).get("input_name")
            inputs.add(input_name)
            problems.append(
                f"node {node_id} ({entry.get('class_type')}) input {input_name!r}: "
                f"{item.get('message')}: {item.get('details')}"
            )
    kind = error.get("type", "node_errors")
    stated = ": ".join(str(error[key]) for key in ("message", "details") if error.get(key))
    summary = "; ".join(problems) or stated or excerpt(json.dumps(payload), 300)
    if "lora_name" in inputs:
        fix = "the LoRA is not in ComfyUI's loras folder: deploy it with deploy_lora and check the shared folder path"
    elif "ckpt_name" in inputs:
        fix = "put the checkpoint in ComfyUI's models/checkpoints or configure one that ComfyUI lists"
    elif kind in ("invalid_prompt", "missing_node_type"):
        fix = (
            "the workflow uses a node this ComfyUI does not have: install that custom node or use a core-node template"
        )
    else:
        fix = "correct the named input in the request or the workflow template"
    return f"ComfyUI rejected the workflow for {where} ({kind}): {summary}. Fix: {fix}"


def describe_execution_error(where: str, prompt_id: str, data: dict[str, Any]) -> str:
    exception_type = str(data.get("exception_type", "error"))
    if "OutOfMemory" in exception_type:
        fix = "lower width/height or use fewer LoRAs, or free the GPU (ComfyUI POST /free) and retry"
    else:
        fix = "see the traceback in the ComfyUI console; check that node's inputs and model files"
    return (
        f"ComfyUI failed on {where} (prompt {prompt_id}) in node {data.get('node_id')} ({data.get('node_type')}): "
        f"{exception_type}: {str(data.get('exception_message', '')).strip()}. Fix: {fix}"
    )


def first_output_file(outputs: dict[str, Any]) -> dict[str, Any] | None:
    """The first file any output node reported; every list-valued key is scanned, as the reference advises."""
    for node_output in outputs.values():
        for value in (node_output or {}).values():
            for item in value if isinstance(value, list) else []:
                if isinstance(item, dict) and item.get("filename"):
                    return item
    return None


def _where(index: int) -> str:
    """How errors name a request: 1-based, as a person counts the images of a plan."""
    return f"generation request {index + 1}"


def _clip_where(index: int) -> str:
    return f"clip {index + 1}"


def _content_name(png: bytes) -> str:
    """Named by content: an identical still maps to the same file in ComfyUI, a changed one to a new file."""
    return f"still-{hashlib.sha256(png).hexdigest()[:20]}.png"


def _queue_ids(payload: dict[str, Any], key: str) -> set[str]:
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


def _lora_file_name(name: str, source: Path) -> str:
    """The file name in ComfyUI's loras folder: `name`, plus the source's extension when it has none."""
    file_name = name if name.endswith(LORA_EXTENSIONS) else f"{name}{source.suffix}"
    if not LORA_NAME_RE.match(file_name) or ".." in file_name or not file_name.endswith(LORA_EXTENSIONS):
        raise InputError(
            f"LoRA name {name!r}",
            "must be a plain file name (letters, digits, '.', '_', '-') ending in " + ", ".join(LORA_EXTENSIONS),
            "use something like 'ava-v3.safetensors'",
        )
    return file_name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same_content(source: Path, target: Path) -> bool:
    return target.is_file() and target.stat().st_size == source.stat().st_size and _sha256(target) == _sha256(source)


def _atomic_copy(source: Path, target: Path) -> None:
    """Copy to a hidden temporary name ComfyUI ignores (wrong extension), then rename: ComfyUI never lists,
    and never loads, a half-written LoRA."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        shutil.copyfile(source, temporary)
        with temporary.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _read_ledger(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / DEPLOYED_LEDGER
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring an unreadable deployment ledger %s (%s); older deployed LoRAs stay", path, exc)
        return {}
    files = payload.get("files") if isinstance(payload, dict) else None
    return {str(k): v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def _write_ledger(folder: Path, ledger: dict[str, dict[str, Any]]) -> None:
    path = folder / DEPLOYED_LEDGER
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    temporary.write_text(json.dumps({"version": 1, "files": ledger}, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)


@contextlib.contextmanager
def _ledger_lock(folder: Path) -> Iterator[None]:
    """One deployer at a time edits the ledger (two personas' runs may deploy at once): an exclusive flock on the
    folder itself, so no lock file is left in ComfyUI's loras folder."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _age_s(entry: dict[str, Any], now: dt.datetime) -> float:
    """Seconds since the ledger entry was last deployed; an unreadable stamp counts as old."""
    try:
        return (now - dt.datetime.fromisoformat(str(entry.get("deployed_at")))).total_seconds()
    except ValueError:
        return float("inf")
