"""The ComfyUI image engine: the `ImageEngine` (and image-to-video animator) backed by a ComfyUI server.

It validates every request against the workflow template and what ComfyUI lists (`/object_info`) before the
first prompt is queued, fills the template (`generation.workflows`), hands the graphs to `PromptRunner` (which
keeps ComfyUI's queue full and follows progress), and turns each finished prompt's history entry into a
`GeneratedImage` or `GeneratedClip`, or into the `ComfyUIError` it ended with. LoRAs reach ComfyUI through a
shared loras folder (`deployment`), checked first against the checkpoint's base-model family.

Image-to-video (`animate`) goes through the same queue: each still is uploaded to ComfyUI's input folder under
its content hash (so a retry reuses the file), the `svd-img2vid` template is filled, and the animated WEBP that
`SaveAnimatedWEBP` writes comes back as bytes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import ClipRequest, GeneratedClip, GeneratedImage, GenerationRequest
from influencer_pipeline.generation.comfyui.client import UPLOAD_SUBFOLDER, ComfyUIClient, combo_options
from influencer_pipeline.generation.comfyui.deployment import (
    lora_file_name,
    place_lora,
    read_ledger,
    record_deployment,
    shared_loras_dir,
    wait_until_listed,
)
from influencer_pipeline.generation.comfyui.errors import ComfyUIError, history_failure
from influencer_pipeline.generation.comfyui.jobs import Job, clip_where, request_where
from influencer_pipeline.generation.comfyui.runner import PromptRunner
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

log = logging.getLogger(__name__)

SEED_LIMIT = 2**53  # random seeds stay exact in JSON read by JavaScript (n8n, the ComfyUI UI)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
        self.client = ComfyUIClient(
            url,
            connect_timeout_s=connect_timeout_s,
            http_timeout_s=http_timeout_s,
            submit_retries=submit_retries,
            retry_backoff_s=retry_backoff_s,
        )
        if max_in_flight < 1:
            raise InputError("max_in_flight", f"must be at least 1, got {max_in_flight}", "use 2-8")
        self.loras_dir = Path(loras_dir) if loras_dir is not None else None
        self.checkpoint = checkpoint
        self.template = load_template(template, templates_dir)
        self.video_checkpoint = video_checkpoint
        self._video_template = (video_template, templates_dir)
        self.timeout_s = timeout_s
        self.retire_after_s = retire_after_s
        if checkpoints_dir is None and self.loras_dir is not None:
            checkpoints_dir = self.loras_dir.parent / "checkpoints"
        self.checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir is not None else None
        self.max_in_flight = max_in_flight
        self.poll_interval_s = poll_interval_s
        self.deploy_timeout_s = deploy_timeout_s

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
        file_name = lora_file_name(name, source)
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
        folder = shared_loras_dir(self.loras_dir)
        place_lora(source, folder / file_name)
        wait_until_listed(self.client, file_name, folder, self.deploy_timeout_s, self.poll_interval_s)
        record_deployment(folder, file_name, group, source, self.retire_after_s, self.client.loras_in_queue)
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

    def deployed(self) -> dict[str, dict[str, Any]]:
        """The deployment ledger: file name -> {group, sha256, deployed_at}."""
        return read_ledger(shared_loras_dir(self.loras_dir))

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
                self.template,
                request,
                seed=seed,
                checkpoint=self.checkpoint,
                choices=choices,
                where=request_where(index),
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
        sampler = self.client.node_info("KSampler")
        loader = "ImageOnlyCheckpointLoader"
        choices = ServerChoices(
            samplers=combo_options(sampler, "KSampler", "sampler_name"),
            schedulers=combo_options(sampler, "KSampler", "scheduler"),
            checkpoints=combo_options(self.client.node_info(loader), loader, "ckpt_name"),
        )
        seeded = [(clip, clip.seed if clip.seed is not None else secrets.randbelow(SEED_LIMIT)) for clip in clips]
        for index, (clip, seed) in enumerate(seeded):  # validated with the name the upload will normally get
            self._video_graph(index, clip, seed, f"{UPLOAD_SUBFOLDER}/{content_name(clip.still_png)}", choices)
        jobs = []
        for index, (clip, seed) in enumerate(seeded):
            uploaded = self.client.upload_image(clip.still_png, content_name(clip.still_png), clip_where(index))
            jobs.append(Job(index, clip, seed, self._video_graph(index, clip, seed, uploaded, choices)))
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
            self.video_template, request, checkpoint=self.video_checkpoint, choices=choices, where=clip_where(index)
        )

    def _execute(
        self, jobs: list[Job], progress: Callable[[int, int], None], should_stop: Callable[[], bool]
    ) -> list[Any]:
        runner = PromptRunner(self.client, self.max_in_flight, self.timeout_s, self.poll_interval_s)
        return runner.run(jobs, self._collect, progress, should_stop)

    def _server_choices(self, need_loras: bool) -> ServerChoices:
        sampler = self.client.node_info("KSampler")
        return ServerChoices(
            samplers=combo_options(sampler, "KSampler", "sampler_name"),
            schedulers=combo_options(sampler, "KSampler", "scheduler"),
            checkpoints=combo_options(
                self.client.node_info("CheckpointLoaderSimple"), "CheckpointLoaderSimple", "ckpt_name"
            ),
            loras=self.client.list_loras() if need_loras else None,
        )

    def _prepare(self, index: int, request: GenerationRequest, choices: ServerChoices) -> Job:
        seed = request.seed if request.seed is not None else secrets.randbelow(SEED_LIMIT)
        graph = build_txt2img(
            self.template, request, seed=seed, checkpoint=self.checkpoint, choices=choices, where=request_where(index)
        )
        return Job(index, request, seed, graph)

    def _collect(self, job: Job, entry: dict[str, Any]) -> GeneratedImage | GeneratedClip:
        """Turn a finished prompt's history entry into the image, or into the error it ended with."""
        failure = history_failure(job.where, job.prompt_id, entry)
        if failure is not None:
            raise failure
        image = first_output_file(entry.get("outputs") or {})
        if isinstance(job.request, ClipRequest):
            return self._collect_clip(job, image)
        if image is None:
            raise ComfyUIError(
                f"ComfyUI finished {job.where} (prompt {job.prompt_id}) without an output image. The workflow "
                f"template {self.template.name!r} must end in a SaveImage node"
            )
        png = self.client.download(image, job.where)
        if not png.startswith(PNG_SIGNATURE):
            raise ComfyUIError(
                f"ComfyUI's output {image['filename']!r} for {job.where} is not a PNG. The workflow template "
                f"{self.template.name!r} must save with SaveImage"
            )
        return GeneratedImage(png=png, params=self._params(job))

    def _collect_clip(self, job: Job, output: dict[str, Any] | None) -> GeneratedClip:
        webp = self.client.download(output, job.where) if output is not None else b""
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

    def _params(self, job: Job) -> dict[str, Any]:
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


def first_output_file(outputs: dict[str, Any]) -> dict[str, Any] | None:
    """The first file any output node reported in a history entry's `outputs`. Every list-valued key is scanned,
    not only the `images` that core save nodes use (as in
    https://github.com/comfyanonymous/ComfyUI/blob/master/script_examples/websockets_api_example.py): custom
    video nodes report files under keys of their own."""
    for node_output in outputs.values():
        for value in (node_output or {}).values():
            for item in value if isinstance(value, list) else []:
                if isinstance(item, dict) and item.get("filename"):
                    return item
    return None


def content_name(png: bytes) -> str:
    """Named by content: an identical still maps to the same file in ComfyUI, a changed one to a new file."""
    return f"still-{hashlib.sha256(png).hexdigest()[:20]}.png"
