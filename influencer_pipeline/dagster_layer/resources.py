"""Resources: which engine each role uses, chosen from environment variables at load time.

Unset variables mean the embedded defaults (local media folder, no caption model); see README for the list.
Every setting that can carry a credential (API keys, and every URL: `user:password@host` and `?token=` put one
in a URL) is passed as `dg.EnvVar` (`SECRET_ENV_VARS`): the definitions then hold only the variable's name, so
neither the webserver's resource view nor GraphQL can show the value, and the run reads it at start.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from dagster_aws.s3 import S3Resource

from influencer_pipeline.captions import BlipCaptioner, Captioner
from influencer_pipeline.content.writers import TemplateWriter, Writer
from influencer_pipeline.dagster_layer.publishing import PublishingResource
from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import ImageEngine
from influencer_pipeline.generation.comfyui import ComfyUIEngine
from influencer_pipeline.generation.consistency import ClipEmbedder, ColorLayoutEmbedder, Embedder
from influencer_pipeline.media import LocalMediaStore, MediaStore, S3MediaStore
from influencer_pipeline.media.store import DEFAULT_MAX_FILE_BYTES
from influencer_pipeline.training.base import Trainer
from influencer_pipeline.voice.timing import Voice

if TYPE_CHECKING:
    from influencer_pipeline.voice import WhisperAligner


class MediaStoreResource(dg.ConfigurableResource):
    """Base for the media-store backends; assets depend on this type and call `get_store()`."""

    def get_store(self) -> MediaStore:
        raise NotImplementedError

    @property
    def engine(self) -> str:
        raise NotImplementedError


class LocalMediaStoreResource(MediaStoreResource):
    root: str = "media"
    # Links and special files are never read; no single file is read past this many bytes (docs/SETUP.md).
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES

    def get_store(self) -> MediaStore:
        return LocalMediaStore(self.root, max_file_bytes=self.max_file_bytes)

    @property
    def engine(self) -> str:
        return "local"


class S3MediaStoreResource(MediaStoreResource):
    bucket: str
    prefix: str = ""
    s3: S3Resource

    def get_store(self) -> MediaStore:
        return S3MediaStore(self.s3.get_client(), self.bucket, self.prefix)

    @property
    def engine(self) -> str:
        return "s3"


class CaptionerResource(dg.ConfigurableResource):
    """The dataset captioner. An empty `model` means none: uploaded sidecars or a marked fallback caption."""

    model: str = ""
    device: str = "auto"
    batch_size: int = 8
    max_new_tokens: int = 30

    def get_captioner(self) -> Captioner | None:
        if not self.model:
            return None
        return BlipCaptioner(
            self.model, device=self.device, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens
        )


class TrainerResource(dg.ConfigurableResource):
    """LoRA trainer: kohya sd-scripts when `kohya_sd_scripts` is set, else the embedded diffusers + peft trainer."""

    kohya_sd_scripts: str = ""
    accelerate: str = "accelerate"
    kohya_tokenizer_cache_dir: str = ""  # sd-scripts' --tokenizer_cache_dir: the CLIP tokenizers, read offline
    device: str = "auto"
    work_dir: str = "work"  # local scratch: dataset copies, trainer output (kept for resume), tiny-model cache

    @property
    def engine(self) -> str:
        return "kohya" if self.kohya_sd_scripts else "embedded"

    @property
    def default_preset(self) -> str:
        return "sd15-standard" if self.kohya_sd_scripts else "embedded-tiny"

    def get_trainer(self) -> Trainer:
        if self.kohya_sd_scripts:
            from influencer_pipeline.training.kohya import KohyaTrainer

            return KohyaTrainer(
                Path(self.kohya_sd_scripts),
                accelerate=shlex.split(self.accelerate),
                tokenizer_cache_dir=Path(self.kohya_tokenizer_cache_dir) if self.kohya_tokenizer_cache_dir else None,
                device=self.device,
            )
        from influencer_pipeline.training.embedded import EmbeddedTrainer

        return EmbeddedTrainer(cache_dir=Path(self.work_dir) / "models", device=self.device)


class ImageEngineResource(dg.ConfigurableResource):
    """Image engine: ComfyUI when `comfyui_url` is set, else the embedded diffusers pipeline."""

    comfyui_url: str = ""  # from dg.EnvVar("COMFYUI_URL"): may carry user:password@
    comfyui_loras_dir: str = ""  # ComfyUI's models/loras, shared with this host (mount or sync)
    comfyui_checkpoint: str = "v1-5-pruned-emaonly.safetensors"
    comfyui_template: str = "sd15-lora-txt2img"
    comfyui_timeout_s: float = 600.0
    comfyui_video_checkpoint: str = "svd_xt.safetensors"  # image-to-video (post_videos img2vid_clips)
    base_model: str = "tiny"  # embedded: "tiny" or a local diffusers SD1.5/SDXL folder
    device: str = "auto"
    work_dir: str = "work"
    consistency_clip_model: str = ""  # a local CLIP folder for the consistency score; empty: colour/layout

    @property
    def engine(self) -> str:
        return "comfyui" if self.comfyui_url else "embedded"

    def get_engine(self) -> ImageEngine:
        if self.comfyui_url:
            loras = Path(self.comfyui_loras_dir) if self.comfyui_loras_dir else None
            return ComfyUIEngine(
                self.comfyui_url,
                loras,
                self.comfyui_checkpoint,
                template=self.comfyui_template,
                timeout_s=self.comfyui_timeout_s,
                video_checkpoint=self.comfyui_video_checkpoint,
            )
        from influencer_pipeline.generation.embedded import EmbeddedImageEngine

        return EmbeddedImageEngine(self.base_model, cache_dir=Path(self.work_dir) / "models", device=self.device)

    def get_animator(self, where: str) -> ComfyUIEngine:
        """The engine that turns stills into clips: only ComfyUI does (SVD); the embedded engine makes stills."""
        engine = self.get_engine()
        if not isinstance(engine, ComfyUIEngine):
            raise InputError(
                where,
                "image-to-video clips need the ComfyUI engine; the embedded engine only makes stills",
                "set COMFYUI_URL (with an SVD checkpoint such as svd_xt.safetensors in ComfyUI's models/checkpoints, "
                "named by COMFYUI_VIDEO_CHECKPOINT), or set img2vid_clips to 0 for Ken Burns motion",
            )
        return engine

    def get_embedder(self) -> Embedder:
        return ClipEmbedder(self.consistency_clip_model) if self.consistency_clip_model else ColorLayoutEmbedder()


class WriterResource(dg.ConfigurableResource):
    """Plan writer: an OpenAI-compatible chat API (OpenRouter by default) when a key or URL is set, else templates."""

    api_key: str = ""  # from dg.EnvVar("OPENROUTER_API_KEY"): read at run time, never stored or logged
    base_url: str = ""  # from dg.EnvVar("WRITER_BASE_URL")
    model: str = "openai/gpt-4o-mini"
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0

    @property
    def engine(self) -> str:
        return "openai-chat" if (self.api_key or self.base_url) else "template"

    def get_writer(self) -> Writer:
        if self.engine == "template":
            return TemplateWriter()
        from influencer_pipeline.content.openai_chat import OPENROUTER_URL, OpenAIChatWriter

        return OpenAIChatWriter(
            base_url=self.base_url or OPENROUTER_URL,
            api_key=self.api_key or None,
            model=self.model,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
        )


class VoiceResource(dg.ConfigurableResource):
    """Voice-over: an OpenAI-compatible `/audio/speech` API when `base_url` is set, else espeak-ng (pip, offline).

    Subtitle timing comes from the engine's word events (espeak), else whisper when `whisper_model` names a local
    checkpoint, else the script spread over the voiced parts of the track.
    """

    base_url: str = ""  # from dg.EnvVar("TTS_BASE_URL")
    api_key: str = ""  # from dg.EnvVar("TTS_API_KEY")
    model: str = "tts-1"
    voice: str = ""  # empty: the persona's `voice` for espeak-ng, "alloy" for the API
    whisper_model: str = ""
    device: str = "auto"

    @property
    def engine(self) -> str:
        return "openai-speech" if self.base_url else "espeak-ng"

    def get_voice(self, persona_voice: str) -> Voice:
        if self.base_url:
            from influencer_pipeline.voice import OpenAISpeechVoice

            return OpenAISpeechVoice(
                self.base_url,
                self.api_key or None,
                model=self.model,
                voice=self.voice or persona_voice,
                api_key_env="TTS_API_KEY",
            )
        from influencer_pipeline.voice import EspeakVoice

        return EspeakVoice(voice=self.voice or persona_voice)

    def get_aligner(self) -> WhisperAligner | None:
        if not self.whisper_model:
            return None
        from influencer_pipeline.voice import WhisperAligner

        return WhisperAligner(self.whisper_model, device=self.device)


class UploadPolicy(dg.ConfigurableResource):
    """When the upload sensor treats a persona folder as ready to use."""

    settle_seconds: float = 60.0
    require_ready_marker: bool = False
    full_scan_seconds: float = 300.0


# Settings whose value may be (or contain) a credential: never passed to a resource as a plain string.
SECRET_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "S3_ENDPOINT_URL",
    "COMFYUI_URL",
    "OPENROUTER_API_KEY",
    "WRITER_BASE_URL",
    "TTS_BASE_URL",
    "TTS_API_KEY",
    "POST_LEDGER_URL",
)


def _optional_env(name: str) -> dg.EnvVar | None:
    """An EnvVar only when the variable is set: an EnvVar naming an unset variable fails every run at start."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def _secret_env(name: str) -> dg.EnvVar | str:
    """A credential-bearing string setting: its EnvVar when set, else "" (the setting's "not configured")."""
    return _optional_env(name) or ""


def media_store_from_env() -> MediaStoreResource:
    """`MEDIA_S3_BUCKET` switches to S3/MinIO (`S3_ENDPOINT_URL` for MinIO); otherwise `MEDIA_ROOT` or ./media."""
    bucket = os.environ.get("MEDIA_S3_BUCKET")
    if not bucket:
        return LocalMediaStoreResource(root=os.path.abspath(os.environ.get("MEDIA_ROOT", "media")))
    s3 = S3Resource(
        endpoint_url=_optional_env("S3_ENDPOINT_URL"),
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=_optional_env("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=_optional_env("AWS_SECRET_ACCESS_KEY"),
    )
    return S3MediaStoreResource(bucket=bucket, prefix=os.environ.get("MEDIA_S3_PREFIX", ""), s3=s3)


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    env = os.environ.get
    work_dir = os.path.abspath(env("WORK_DIR", "work"))
    return {
        "media": media_store_from_env(),
        "captioner": CaptionerResource(
            model=os.environ.get("CAPTION_MODEL", ""), device=os.environ.get("CAPTION_DEVICE", "auto")
        ),
        "upload_policy": UploadPolicy(settle_seconds=float(os.environ.get("UPLOAD_SETTLE_SECONDS", "60"))),
        "trainer": TrainerResource(
            kohya_sd_scripts=env("KOHYA_SD_SCRIPTS", ""),
            accelerate=env("KOHYA_ACCELERATE", "accelerate"),
            kohya_tokenizer_cache_dir=env("KOHYA_TOKENIZER_CACHE_DIR", ""),
            device=env("TRAINING_DEVICE", "auto"),
            work_dir=work_dir,
        ),
        "image_engine": ImageEngineResource(
            comfyui_url=_secret_env("COMFYUI_URL"),
            comfyui_loras_dir=env("COMFYUI_LORAS_DIR", ""),
            comfyui_checkpoint=env("COMFYUI_CHECKPOINT", "v1-5-pruned-emaonly.safetensors"),
            comfyui_template=env("COMFYUI_TEMPLATE", "sd15-lora-txt2img"),
            comfyui_video_checkpoint=env("COMFYUI_VIDEO_CHECKPOINT", "svd_xt.safetensors"),
            base_model=env("EMBEDDED_BASE_MODEL", "tiny"),
            device=env("IMAGE_DEVICE", "auto"),
            work_dir=work_dir,
            consistency_clip_model=env("CONSISTENCY_CLIP_MODEL", ""),
        ),
        "writer": WriterResource(
            api_key=_secret_env("OPENROUTER_API_KEY"),
            base_url=_secret_env("WRITER_BASE_URL"),
            model=env("WRITER_MODEL", "openai/gpt-4o-mini"),
        ),
        "voice": VoiceResource(
            base_url=_secret_env("TTS_BASE_URL"),
            api_key=_secret_env("TTS_API_KEY"),
            model=env("TTS_MODEL", "tts-1"),
            voice=env("TTS_VOICE", ""),
            whisper_model=env("WHISPER_MODEL", ""),
        ),
        "publishing": PublishingResource(
            mode=env("PUBLISH_MODE", "outbox"),
            outbox_dir=os.path.abspath(env("OUTBOX_DIR", "outbox")),
            ledger_url=_secret_env("POST_LEDGER_URL"),
            work_dir=work_dir,
        ),
    }
