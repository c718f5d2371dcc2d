"""The one place the Dagster layer reads the environment: a typed, validated `Settings`, read when the definitions
are built (`definitions.build_definitions`), never at import, with one exception (`horizon_days_at_import`).

`Settings.from_env(env)` takes the environment as a mapping (tests pass a dict) and reports every problem at once,
each with its variable, the rule it broke and the fix, in one `SettingsError`. A variable that can carry a
credential (API keys, and every URL: `user:password@host` and `?token=` put one in a URL) is an `EnvSecret`: the
settings record only its name and whether it is set, never its value; the resources receive it as `dg.EnvVar`, so
the definitions the webserver shows hold the name only and the run reads the value when it starts
(https://docs.dagster.io/guides/operate/configuration/using-environment-variables-and-secrets).
Unset (or empty) variables mean the embedded defaults; docs/SETUP.md and README.md list them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg

from influencer_pipeline.dagster_layer.executors import EXECUTOR_ENV, EXECUTORS
from influencer_pipeline.errors import InputError

T = TypeVar("T")
DEFAULT_HORIZON_DAYS = 14
MAX_HORIZON_DAYS = 366
HORIZON_ENV = "CONTENT_HORIZON_DAYS"
PUBLISH_MODES = ("outbox", "live")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICE_FIX = "use auto, cpu, cuda, cuda:N (N = GPU index) or mps"

# Variables whose value may be (or contain) a credential and that reach a resource: always as `dg.EnvVar`.
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
    "INFLUENCER_ACCOUNTS_DB",
    "INFLUENCER_TOKEN_KEYS",
    "NOTIFY_WEBHOOK_URLS",
    "NOTIFY_SLACK_WEBHOOK_URL",
    "NOTIFY_WEBHOOK_SECRET",
    "DAGSTER_UI_URL",
)


class SettingsError(ValueError):
    """Every problem of the environment at once: fixing them one load at a time would take as many restarts."""

    def __init__(self, problems: list[InputError]) -> None:
        self.problems = tuple(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}"
        lines = "".join(f"\n- {problem}" for problem in self.problems)
        super().__init__(f"the environment of the Dagster code location has {count}:{lines}")


def _raise_if(problems: list[InputError]) -> None:
    if problems:
        raise SettingsError(problems)


@dataclass(frozen=True)
class EnvSecret:
    """A credential-bearing variable: its name and whether it is set. The value is never read into the settings."""

    name: str
    is_set: bool = False

    def env_var(self) -> dg.EnvVar | None:
        """What a resource is given: the variable's name for the run to read, or None when it is unset (an
        EnvVar naming an unset variable would fail every run at start)."""
        return dg.EnvVar(self.name) if self.is_set else None

    def env_var_or_empty(self) -> dg.EnvVar | str:
        """For a string field whose "" means "not configured"."""
        return self.env_var() or ""


@dataclass(frozen=True)
class MediaSettings:
    """Where media live: `./media` (`MEDIA_ROOT`), or S3/MinIO when `MEDIA_S3_BUCKET` is set."""

    root: str = "media"
    s3_bucket: str = ""
    s3_prefix: str = ""
    aws_region: str = "us-east-1"
    s3_endpoint_url: EnvSecret = EnvSecret("S3_ENDPOINT_URL")
    aws_access_key_id: EnvSecret = EnvSecret("AWS_ACCESS_KEY_ID")
    aws_secret_access_key: EnvSecret = EnvSecret("AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class CaptionerSettings:
    """No model (`CAPTION_MODEL` unset): uploaded `.txt` sidecars, else a marked fallback caption."""

    model: str = ""
    device: str = "auto"

    def __post_init__(self) -> None:
        _raise_if(_device_problems("CAPTION_DEVICE", self.device))


@dataclass(frozen=True)
class TrainerSettings:
    """The embedded diffusers + peft trainer, or kohya sd-scripts when `KOHYA_SD_SCRIPTS` names its checkout.

    Paths are not checked here: the code location also loads where training never runs (webserver, daemon).
    """

    kohya_sd_scripts: str = ""
    kohya_accelerate: str = "accelerate"
    kohya_tokenizer_cache_dir: str = ""
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = _device_problems("TRAINING_DEVICE", self.device)
        if self.kohya_sd_scripts and self.device == "mps":
            problems.append(
                InputError("TRAINING_DEVICE=mps", "kohya's accelerate launch has no mps option", "use auto or cpu")
            )
        _raise_if(problems)


@dataclass(frozen=True)
class ImageSettings:
    """The embedded diffusers pipeline, or ComfyUI when `COMFYUI_URL` is set."""

    comfyui_url: EnvSecret = EnvSecret("COMFYUI_URL")
    comfyui_loras_dir: str = ""
    comfyui_checkpoint: str = "v1-5-pruned-emaonly.safetensors"
    comfyui_template: str = "sd15-lora-txt2img"
    comfyui_video_checkpoint: str = "svd_xt.safetensors"
    embedded_base_model: str = "tiny"
    device: str = "auto"
    consistency_clip_model: str = ""

    def __post_init__(self) -> None:
        _raise_if(_device_problems("IMAGE_DEVICE", self.device))


@dataclass(frozen=True)
class WriterSettings:
    """Templates, or an OpenAI-compatible chat API when `OPENROUTER_API_KEY` or `WRITER_BASE_URL` is set."""

    api_key: EnvSecret = EnvSecret("OPENROUTER_API_KEY")
    base_url: EnvSecret = EnvSecret("WRITER_BASE_URL")
    model: str = "openai/gpt-4o-mini"


@dataclass(frozen=True)
class VoiceSettings:
    """espeak-ng, or an OpenAI-compatible `/audio/speech` API when `TTS_BASE_URL` is set."""

    base_url: EnvSecret = EnvSecret("TTS_BASE_URL")
    api_key: EnvSecret = EnvSecret("TTS_API_KEY")
    model: str = "tts-1"
    voice: str = ""
    whisper_model: str = ""


@dataclass(frozen=True)
class PublishingSettings:
    """The outbox folder, or the linked accounts (`PUBLISH_MODE=live`); the ledger and the accounts database."""

    mode: str = "outbox"
    outbox_dir: str = "outbox"
    ledger_url: EnvSecret = EnvSecret("POST_LEDGER_URL")
    accounts_db: EnvSecret = EnvSecret("INFLUENCER_ACCOUNTS_DB")
    token_keys: EnvSecret = EnvSecret("INFLUENCER_TOKEN_KEYS")
    dagster_home: str = "."  # the accounts database is next to the instance unless INFLUENCER_ACCOUNTS_DB is set

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in PUBLISH_MODES:
            fix = "unset it for the outbox folder, or set PUBLISH_MODE=live to post to the linked accounts"
            problems.append(
                InputError(f"PUBLISH_MODE={self.mode!r}", f"must be one of {', '.join(PUBLISH_MODES)}", fix)
            )
        if self.mode == "live" and not self.token_keys.is_set:
            problems.append(
                InputError(
                    "INFLUENCER_TOKEN_KEYS",
                    "is not set, and live publishing decrypts the linked accounts' tokens with it",
                    "export the key(s) the accounts were linked with (docs/PUBLISHING.md), or unset PUBLISH_MODE",
                )
            )
        _raise_if(problems)

    @property
    def accounts_default_url(self) -> str:
        """The accounts database when INFLUENCER_ACCOUNTS_DB is unset: where the `influencer-pipeline accounts`
        command puts it (`accounts.store.default_url`, not imported here: the accounts package costs ~80 ms)."""
        return f"sqlite:///{Path(self.dagster_home).resolve() / 'accounts.db'}"


@dataclass(frozen=True)
class NotifierSettings:
    """Where run notifications go; every one of these may carry a credential."""

    webhook_urls: EnvSecret = EnvSecret("NOTIFY_WEBHOOK_URLS")
    slack_webhook_url: EnvSecret = EnvSecret("NOTIFY_SLACK_WEBHOOK_URL")
    webhook_secret: EnvSecret = EnvSecret("NOTIFY_WEBHOOK_SECRET")
    ui_url: EnvSecret = EnvSecret("DAGSTER_UI_URL")

    def __post_init__(self) -> None:
        if self.webhook_urls.is_set and not self.webhook_secret.is_set:  # generic webhooks are HMAC-signed
            raise SettingsError(
                [
                    InputError(
                        "NOTIFY_WEBHOOK_SECRET",
                        "is not set but NOTIFY_WEBHOOK_URLS is, and generic webhooks are signed with it (an unsigned "
                        "notification could be forged by anyone who learns the URL)",
                        "set NOTIFY_WEBHOOK_SECRET to the secret the receiver verifies with",
                    )
                ]
            )


@dataclass(frozen=True)
class ExecutorSettings:
    """Where steps run (`DAGSTER_EXECUTOR`, docs/DEPLOYMENT.md); Celery's URLs are read by the executor at run time."""

    name: str = "multiprocess"
    celery_broker_url: EnvSecret = EnvSecret("CELERY_BROKER_URL")
    celery_result_backend: EnvSecret = EnvSecret("CELERY_RESULT_BACKEND")

    def __post_init__(self) -> None:
        problems = []
        if self.name not in EXECUTORS:
            fix = "unset it (multiprocess), or set it to celery or k8s"
            problems.append(InputError(f"{EXECUTOR_ENV}={self.name!r}", f"must be one of {', '.join(EXECUTORS)}", fix))
        if self.name == "celery":
            for secret in (self.celery_broker_url, self.celery_result_backend):
                if not secret.is_set:
                    rule = "is not set, and DAGSTER_EXECUTOR=celery sends every step through it"
                    fix = f"set {secret.name} to the Redis or RabbitMQ URL the Celery workers use"
                    problems.append(InputError(secret.name, rule, fix))
        _raise_if(problems)


@dataclass(frozen=True)
class CalendarSettings:
    """When the calendar runs and how far ahead it prepares; see docs/SETUP.md."""

    hour: int = 6
    minute: int = 0
    timezone: str = "UTC"
    lead_days: int = 1  # 1: each tick prepares tomorrow; 0: today (no review window)
    horizon_days: int = DEFAULT_HORIZON_DAYS  # the last date partition is this many days after today

    def __post_init__(self) -> None:
        problems = _horizon_problems(self.horizon_days, str(self.horizon_days))
        if not 0 <= self.hour <= 23:
            problems.append(InputError(f"CONTENT_SCHEDULE_HOUR={self.hour}", "must be 0-23", "e.g. 6, or unset it"))
        if not 0 <= self.minute <= 59:
            problems.append(InputError(f"CONTENT_SCHEDULE_MINUTE={self.minute}", "must be 0-59", "e.g. 0, or unset it"))
        if not 0 <= self.lead_days <= self.horizon_days:
            problems.append(
                InputError(
                    f"CONTENT_LEAD_DAYS={self.lead_days}",
                    f"must be 0-{self.horizon_days} (CONTENT_HORIZON_DAYS), a day the calendar has a partition for",
                    "e.g. 1 (tomorrow), or raise CONTENT_HORIZON_DAYS",
                )
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(
                InputError(f"CONTENT_TIMEZONE={self.timezone!r}", "not an IANA time zone", "e.g. Europe/Rome")
            )
        _raise_if(problems)

    @property
    def cron(self) -> str:
        return f"{self.minute} {self.hour} * * *"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CalendarSettings:
        return Settings.from_env(env).calendar


@dataclass(frozen=True)
class UploadSettings:
    """How long a persona's upload folder must be unchanged before the upload sensor uses it."""

    settle_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.settle_seconds < 0:
            raise SettingsError(
                [InputError(f"UPLOAD_SETTLE_SECONDS={self.settle_seconds:g}", "must be 0 or more", "e.g. 60")]
            )


@dataclass(frozen=True)
class Settings:
    """Everything the Dagster layer takes from the environment; `resources_for`, `executor_for` and
    `notifier_for` turn it into definitions."""

    work_dir: str = "work"  # local scratch: dataset copies, trainer output, model caches, the SQLite ledger
    media: MediaSettings = field(default_factory=MediaSettings)
    captioner: CaptionerSettings = field(default_factory=CaptionerSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    image: ImageSettings = field(default_factory=ImageSettings)
    writer: WriterSettings = field(default_factory=WriterSettings)
    voice: VoiceSettings = field(default_factory=VoiceSettings)
    publishing: PublishingSettings = field(default_factory=PublishingSettings)
    notifier: NotifierSettings = field(default_factory=NotifierSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    calendar: CalendarSettings = field(default_factory=CalendarSettings)
    upload: UploadSettings = field(default_factory=UploadSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of `env` (default: this process's environment); a `SettingsError` lists every problem."""
        read = _Reader(os.environ if env is None else env)
        groups = {
            "media": read.build(
                MediaSettings,
                root=read.path("MEDIA_ROOT", "media"),
                s3_bucket=read.text("MEDIA_S3_BUCKET", ""),
                s3_prefix=read.text("MEDIA_S3_PREFIX", ""),
                aws_region=read.text("AWS_REGION", "us-east-1"),
                s3_endpoint_url=read.secret("S3_ENDPOINT_URL"),
                aws_access_key_id=read.secret("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=read.secret("AWS_SECRET_ACCESS_KEY"),
            ),
            "captioner": read.build(
                CaptionerSettings,
                model=read.text("CAPTION_MODEL", ""),
                device=read.text("CAPTION_DEVICE", "auto"),
            ),
            "trainer": read.build(
                TrainerSettings,
                kohya_sd_scripts=read.text("KOHYA_SD_SCRIPTS", ""),
                kohya_accelerate=read.text("KOHYA_ACCELERATE", "accelerate"),
                kohya_tokenizer_cache_dir=read.text("KOHYA_TOKENIZER_CACHE_DIR", ""),
                device=read.text("TRAINING_DEVICE", "auto"),
            ),
            "image": read.build(
                ImageSettings,
                comfyui_url=read.secret("COMFYUI_URL"),
                comfyui_loras_dir=read.text("COMFYUI_LORAS_DIR", ""),
                comfyui_checkpoint=read.text("COMFYUI_CHECKPOINT", "v1-5-pruned-emaonly.safetensors"),
                comfyui_template=read.text("COMFYUI_TEMPLATE", "sd15-lora-txt2img"),
                comfyui_video_checkpoint=read.text("COMFYUI_VIDEO_CHECKPOINT", "svd_xt.safetensors"),
                embedded_base_model=read.text("EMBEDDED_BASE_MODEL", "tiny"),
                device=read.text("IMAGE_DEVICE", "auto"),
                consistency_clip_model=read.text("CONSISTENCY_CLIP_MODEL", ""),
            ),
            "writer": read.build(
                WriterSettings,
                api_key=read.secret("OPENROUTER_API_KEY"),
                base_url=read.secret("WRITER_BASE_URL"),
                model=read.text("WRITER_MODEL", "openai/gpt-4o-mini"),
            ),
            "voice": read.build(
                VoiceSettings,
                base_url=read.secret("TTS_BASE_URL"),
                api_key=read.secret("TTS_API_KEY"),
                model=read.text("TTS_MODEL", "tts-1"),
                voice=read.text("TTS_VOICE", ""),
                whisper_model=read.text("WHISPER_MODEL", ""),
            ),
            "publishing": read.build(
                PublishingSettings,
                mode=read.text("PUBLISH_MODE", "outbox").lower(),
                outbox_dir=read.path("OUTBOX_DIR", "outbox"),
                ledger_url=read.secret("POST_LEDGER_URL"),
                accounts_db=read.secret("INFLUENCER_ACCOUNTS_DB"),
                token_keys=read.secret("INFLUENCER_TOKEN_KEYS"),
                dagster_home=read.path("DAGSTER_HOME", "."),
            ),
            "notifier": read.build(
                NotifierSettings,
                webhook_urls=read.secret("NOTIFY_WEBHOOK_URLS"),
                slack_webhook_url=read.secret("NOTIFY_SLACK_WEBHOOK_URL"),
                webhook_secret=read.secret("NOTIFY_WEBHOOK_SECRET"),
                ui_url=read.secret("DAGSTER_UI_URL"),
            ),
            "executor": read.build(
                ExecutorSettings,
                name=read.text(EXECUTOR_ENV, "multiprocess").lower(),
                celery_broker_url=read.secret("CELERY_BROKER_URL"),
                celery_result_backend=read.secret("CELERY_RESULT_BACKEND"),
            ),
            "calendar": read.build(
                CalendarSettings,
                hour=read.whole("CONTENT_SCHEDULE_HOUR", 6),
                minute=read.whole("CONTENT_SCHEDULE_MINUTE", 0),
                timezone=read.text("CONTENT_TIMEZONE", "UTC"),
                lead_days=read.whole("CONTENT_LEAD_DAYS", 1),
                horizon_days=read.whole(HORIZON_ENV, DEFAULT_HORIZON_DAYS),
            ),
            "upload": read.build(UploadSettings, settle_seconds=read.number("UPLOAD_SETTLE_SECONDS", 60.0)),
        }
        work_dir = read.path("WORK_DIR", "work")
        _raise_if(read.problems)
        return cls(work_dir=work_dir, **groups)


class _Reader:
    """Reads variables from one mapping and collects every problem instead of stopping at the first.

    An empty variable counts as unset (compose files and Kubernetes manifests often pass `VAR=`).
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[InputError] = []

    def text(self, name: str, default: str) -> str:
        return self.env.get(name, "").strip() or default

    def path(self, name: str, default: str) -> str:
        """An absolute path: steps may run with another working directory than the process that loaded them."""
        return str(Path(self.text(name, default)).expanduser().absolute())

    def secret(self, name: str) -> EnvSecret:
        return EnvSecret(name, bool(self.env.get(name, "").strip()))

    def whole(self, name: str, default: int) -> int:
        raw = self.text(name, str(default))
        try:
            return int(raw)
        except ValueError:
            self.problems.append(InputError(f"{name}={raw!r}", "must be a whole number", f"e.g. {name}={default}"))
            return default

    def number(self, name: str, default: float) -> float:
        raw = self.text(name, str(default))
        try:
            return float(raw)
        except ValueError:
            self.problems.append(InputError(f"{name}={raw!r}", "must be a number", f"e.g. {name}={default:g}"))
            return default

    def build(self, cls: type[T], **values: object) -> T:
        """`cls(**values)`, or its defaults after recording the problems its own checks found."""
        try:
            return cls(**values)
        except SettingsError as err:
            self.problems.extend(err.problems)
            return cls()


def _device_problems(name: str, device: str) -> list[InputError]:
    if DEVICE.fullmatch(device):
        return []
    return [InputError(f"{name}={device!r}", "is not a device", DEVICE_FIX)]


def _horizon_problems(value: int, raw: str) -> list[InputError]:
    if 0 <= value <= MAX_HORIZON_DAYS:
        return []
    return [
        InputError(
            f"{HORIZON_ENV}={raw!r}",
            f"must be a whole number of days from 0 to {MAX_HORIZON_DAYS}",
            f"set it to e.g. {DEFAULT_HORIZON_DAYS}, or unset it",
        )
    ]


def horizon_days_at_import(env: Mapping[str, str] | None = None) -> int:
    """`CONTENT_HORIZON_DAYS` for the date partitions: the one variable read when a module is imported.

    Why at import: `partitions.calendar` is part of the asset definitions of the content and publishing groups,
    and an asset's `partitions_def` is fixed when its decorator runs, which is when its module is imported (the
    defs-folder loader imports them); `build_definitions` comes later and cannot change it. `Settings.from_env`
    reads the same variable with the same rule, and `build_definitions` refuses settings whose horizon differs
    from the one the partitions were built with.
    """
    raw = (os.environ if env is None else env).get(HORIZON_ENV, "").strip() or str(DEFAULT_HORIZON_DAYS)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    _raise_if(_horizon_problems(value, raw))
    return value


_BUILDING: ContextVar[Settings | None] = ContextVar("influencer_pipeline_settings", default=None)


@contextlib.contextmanager
def settings_in_use(settings: Settings) -> Iterator[Settings]:
    """Make `settings` what `load_settings()` returns while the definitions are built with them."""
    token = _BUILDING.set(settings)
    try:
        yield settings
    finally:
        _BUILDING.reset(token)


def load_settings() -> Settings:
    """The settings of the definitions being built (so a `@dg.definitions` factory in the defs folder sees the
    same object `build_definitions` was given); outside a build, read now from this process's environment."""
    building = _BUILDING.get()
    return building if building is not None else Settings.from_env()
