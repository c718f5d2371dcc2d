"""Resources: one base class per role, which assets depend on, and one subclass per engine.

`resources_for(settings)` picks each role's engine from the `Settings` read when the definitions are built
(`dagster_layer/settings.py`, the only module that reads the environment); unset variables mean the embedded
defaults. Every setting that can carry a credential (API keys, and every URL: `user:password@host` and `?token=`
put one in a URL) is passed as `dg.EnvVar` (`settings.SECRET_ENV_VARS`): the definitions then hold only the variable's
name, so neither the webserver's resource view nor GraphQL can show the value, and the run reads it at start
(https://docs.dagster.io/guides/operate/configuration/using-environment-variables-and-secrets).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from dagster_aws.s3 import S3Resource

from influencer_pipeline.captions import BlipCaptioner, Captioner
from influencer_pipeline.content.writers import TemplateWriter, Writer
from influencer_pipeline.dagster_layer.publishing import PublishingResource
from influencer_pipeline.dagster_layer.settings import MediaSettings, Settings
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
    """Base of the dataset captioners; `get_captioner()` is None when no model captions (sidecars or fallback)."""

    def get_captioner(self) -> Captioner | None:
        raise NotImplementedError

    @property
    def engine(self) -> str:
        raise NotImplementedError


class SidecarCaptionerResource(CaptionerResource):
    """No caption model: the uploaded `.txt` sidecars, else a marked fallback caption and a WARN check."""

    def get_captioner(self) -> Captioner | None:
        return None

    @property
    def engine(self) -> str:
        return "sidecars"


class BlipCaptionerResource(CaptionerResource):
    """A local BLIP / BLIP-2 folder or an already-cached Hugging Face id (`CAPTION_MODEL`)."""

    model: str
    device: str = "auto"
    batch_size: int = 8
    max_new_tokens: int = 30

    def get_captioner(self) -> Captioner | None:
        return BlipCaptioner(
            self.model, device=self.device, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens
        )

    @property
    def engine(self) -> str:
        return "blip"


class TrainerResource(dg.ConfigurableResource):
    """Base of the LoRA trainers; assets call `get_trainer()` and read `engine` and `default_preset`."""

    device: str = "auto"
    work_dir: str = "work"  # local scratch: dataset copies, trainer output (kept for resume), tiny-model cache

    @property
    def engine(self) -> str:
        raise NotImplementedError

    @property
    def default_preset(self) -> str:
        raise NotImplementedError

    def get_trainer(self) -> Trainer:
        raise NotImplementedError


class EmbeddedTrainerResource(TrainerResource):
    """diffusers + peft in the step's own process, on a tiny model built from config unless a preset names one."""

    @property
    def engine(self) -> str:
        return "embedded"

    @property
    def default_preset(self) -> str:
        return "embedded-tiny"

    def get_trainer(self) -> Trainer:
        from influencer_pipeline.training.embedded import EmbeddedTrainer

        return EmbeddedTrainer(cache_dir=Path(self.work_dir) / "models", device=self.device)


class KohyaTrainerResource(TrainerResource):
    """kohya sd-scripts launched with accelerate from the checkout at `sd_scripts` (`KOHYA_SD_SCRIPTS`)."""

    sd_scripts: str
    accelerate: str = "accelerate"  # the launcher command, split like a shell would
    tokenizer_cache_dir: str = ""  # sd-scripts' --tokenizer_cache_dir: the CLIP tokenizers, read offline

    @property
    def engine(self) -> str:
        return "kohya"

    @property
    def default_preset(self) -> str:
        return "sd15-standard"

    def get_trainer(self) -> Trainer:
        from influencer_pipeline.training.kohya import KohyaTrainer

        return KohyaTrainer(
            Path(self.sd_scripts),
            accelerate=shlex.split(self.accelerate),
            tokenizer_cache_dir=Path(self.tokenizer_cache_dir) if self.tokenizer_cache_dir else None,
            device=self.device,
        )


class ImageEngineResource(dg.ConfigurableResource):
    """Base of the image engines; assets call `get_engine()`, `get_animator()`, `get_embedder()`."""

    work_dir: str = "work"  # LoRA copies on their way to the engine, reel scratch, model caches
    consistency_clip_model: str = ""  # a local CLIP folder for the consistency score; empty: colour/layout

    @property
    def engine(self) -> str:
        raise NotImplementedError

    def get_engine(self) -> ImageEngine:
        raise NotImplementedError

    def get_animator(self, where: str) -> ComfyUIEngine:
        """The engine that turns stills into clips: only ComfyUI does (SVD); the embedded engine makes stills."""
        raise InputError(
            where,
            "image-to-video clips need the ComfyUI engine; the embedded engine only makes stills",
            "set COMFYUI_URL (with an SVD checkpoint such as svd_xt.safetensors in ComfyUI's models/checkpoints, "
            "named by COMFYUI_VIDEO_CHECKPOINT), or set img2vid_clips to 0 for Ken Burns motion",
        )

    def get_embedder(self) -> Embedder:
        return ClipEmbedder(self.consistency_clip_model) if self.consistency_clip_model else ColorLayoutEmbedder()


class EmbeddedImageEngineResource(ImageEngineResource):
    """The diffusers pipeline in the step's process: `base_model` "tiny" or a local diffusers SD1.5/SDXL folder."""

    base_model: str = "tiny"
    device: str = "auto"

    @property
    def engine(self) -> str:
        return "embedded"

    def get_engine(self) -> ImageEngine:
        from influencer_pipeline.generation.embedded import EmbeddedImageEngine

        return EmbeddedImageEngine(self.base_model, cache_dir=Path(self.work_dir) / "models", device=self.device)


class ComfyUIImageEngineResource(ImageEngineResource):
    """A ComfyUI server at `url` (from dg.EnvVar("COMFYUI_URL"): it may carry user:password@)."""

    url: str
    loras_dir: str = ""  # ComfyUI's models/loras, shared with this host (mount or sync)
    checkpoint: str = "v1-5-pruned-emaonly.safetensors"
    template: str = "sd15-lora-txt2img"
    timeout_s: float = 600.0
    video_checkpoint: str = "svd_xt.safetensors"  # image-to-video (post_videos img2vid_clips)

    @property
    def engine(self) -> str:
        return "comfyui"

    def get_engine(self) -> ComfyUIEngine:
        return ComfyUIEngine(
            self.url,
            Path(self.loras_dir) if self.loras_dir else None,
            self.checkpoint,
            template=self.template,
            timeout_s=self.timeout_s,
            video_checkpoint=self.video_checkpoint,
        )

    def get_animator(self, where: str) -> ComfyUIEngine:
        return self.get_engine()


class WriterResource(dg.ConfigurableResource):
    """Base of the plan writers; assets call `get_writer()`."""

    @property
    def engine(self) -> str:
        raise NotImplementedError

    def get_writer(self) -> Writer:
        raise NotImplementedError


class TemplateWriterResource(WriterResource):
    """Plans from `persona.yaml`'s themes and templates: offline and deterministic."""

    @property
    def engine(self) -> str:
        return "template"

    def get_writer(self) -> Writer:
        return TemplateWriter()


class OpenAIChatWriterResource(WriterResource):
    """An OpenAI-compatible chat API: OpenRouter unless `base_url` names another."""

    api_key: str = ""  # from dg.EnvVar("OPENROUTER_API_KEY"): read at run time, never stored or logged
    base_url: str = ""  # from dg.EnvVar("WRITER_BASE_URL"); empty: OpenRouter
    model: str = "openai/gpt-4o-mini"
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0

    @property
    def engine(self) -> str:
        return "openai-chat"

    def get_writer(self) -> Writer:
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
    """Base of the voice-over engines.

    Subtitle timing comes from the engine's word events (espeak), else whisper when `whisper_model` names a local
    checkpoint, else the script spread over the voiced parts of the track.
    """

    voice: str = ""  # empty: the persona's `voice`
    whisper_model: str = ""
    device: str = "auto"  # whisper's

    @property
    def engine(self) -> str:
        raise NotImplementedError

    def get_voice(self, persona_voice: str) -> Voice:
        raise NotImplementedError

    def get_aligner(self) -> WhisperAligner | None:
        if not self.whisper_model:
            return None
        from influencer_pipeline.voice import WhisperAligner

        return WhisperAligner(self.whisper_model, device=self.device)


class EspeakVoiceResource(VoiceResource):
    """espeak-ng (pip package, offline), whose word events time the subtitles."""

    @property
    def engine(self) -> str:
        return "espeak-ng"

    def get_voice(self, persona_voice: str) -> Voice:
        from influencer_pipeline.voice import EspeakVoice

        return EspeakVoice(voice=self.voice or persona_voice)


class OpenAISpeechVoiceResource(VoiceResource):
    """An OpenAI-compatible `/audio/speech` API at `base_url` (from dg.EnvVar("TTS_BASE_URL"))."""

    base_url: str
    api_key: str = ""  # from dg.EnvVar("TTS_API_KEY")
    model: str = "tts-1"

    @property
    def engine(self) -> str:
        return "openai-speech"

    def get_voice(self, persona_voice: str) -> Voice:
        from influencer_pipeline.voice import OpenAISpeechVoice

        return OpenAISpeechVoice(
            self.base_url,
            self.api_key or None,
            model=self.model,
            voice=self.voice or persona_voice,
            api_key_env="TTS_API_KEY",
        )


class UploadPolicy(dg.ConfigurableResource):
    """When the upload sensor treats a persona folder as ready to use."""

    settle_seconds: float = 60.0
    require_ready_marker: bool = False
    full_scan_seconds: float = 300.0


def media_store_for(media: MediaSettings) -> MediaStoreResource:
    """S3/MinIO when `MEDIA_S3_BUCKET` is set (`S3_ENDPOINT_URL` for MinIO), else the `MEDIA_ROOT` folder."""
    if not media.s3_bucket:
        return LocalMediaStoreResource(root=media.root)
    s3 = S3Resource(
        endpoint_url=media.s3_endpoint_url.env_var(),
        region_name=media.aws_region,
        aws_access_key_id=media.aws_access_key_id.env_var(),
        aws_secret_access_key=media.aws_secret_access_key.env_var(),
    )
    return S3MediaStoreResource(bucket=media.s3_bucket, prefix=media.s3_prefix, s3=s3)


def resources_for(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Every resource but the notifier (`notifier_for`), each role's engine chosen by its settings."""
    work_dir = settings.work_dir
    captioning, training, image, writing, speech = (
        settings.captioner,
        settings.trainer,
        settings.image,
        settings.writer,
        settings.voice,
    )
    captioner: CaptionerResource = (
        BlipCaptionerResource(model=captioning.model, device=captioning.device)
        if captioning.model
        else SidecarCaptionerResource()
    )
    trainer: TrainerResource = (
        KohyaTrainerResource(
            sd_scripts=training.kohya_sd_scripts,
            accelerate=training.kohya_accelerate,
            tokenizer_cache_dir=training.kohya_tokenizer_cache_dir,
            device=training.device,
            work_dir=work_dir,
        )
        if training.kohya_sd_scripts
        else EmbeddedTrainerResource(device=training.device, work_dir=work_dir)
    )
    image_engine: ImageEngineResource = (
        ComfyUIImageEngineResource(
            url=dg.EnvVar(image.comfyui_url.name),
            loras_dir=image.comfyui_loras_dir,
            checkpoint=image.comfyui_checkpoint,
            template=image.comfyui_template,
            video_checkpoint=image.comfyui_video_checkpoint,
            work_dir=work_dir,
            consistency_clip_model=image.consistency_clip_model,
        )
        if image.comfyui_url.is_set
        else EmbeddedImageEngineResource(
            base_model=image.embedded_base_model,
            device=image.device,
            work_dir=work_dir,
            consistency_clip_model=image.consistency_clip_model,
        )
    )
    writer: WriterResource = (
        OpenAIChatWriterResource(
            api_key=writing.api_key.env_var_or_empty(),
            base_url=writing.base_url.env_var_or_empty(),
            model=writing.model,
        )
        if writing.api_key.is_set or writing.base_url.is_set
        else TemplateWriterResource()
    )
    voice: VoiceResource = (
        OpenAISpeechVoiceResource(
            base_url=dg.EnvVar(speech.base_url.name),
            api_key=speech.api_key.env_var_or_empty(),
            model=speech.model,
            voice=speech.voice,
            whisper_model=speech.whisper_model,
        )
        if speech.base_url.is_set
        else EspeakVoiceResource(voice=speech.voice, whisper_model=speech.whisper_model)
    )
    publishing = settings.publishing
    return {
        "media": media_store_for(settings.media),
        "captioner": captioner,
        "upload_policy": UploadPolicy(settle_seconds=settings.upload.settle_seconds),
        "trainer": trainer,
        "image_engine": image_engine,
        "writer": writer,
        "voice": voice,
        "publishing": PublishingResource(
            mode=publishing.mode,
            outbox_dir=publishing.outbox_dir,
            ledger_url=publishing.ledger_url.env_var_or_empty(),
            accounts_url=publishing.accounts_db.env_var() or publishing.accounts_default_url,
            token_keys=publishing.token_keys.env_var_or_empty(),
            work_dir=work_dir,
        ),
    }
