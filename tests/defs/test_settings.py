"""Settings once: the Dagster layer reads the environment in one place, into one typed `Settings`, and each role's
engine is a resource subclass chosen from it; credentials reach resources as `dg.EnvVar` names only."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value
from sqlalchemy.engine import Engine

from influencer_pipeline.accounts.store import default_url as accounts_default_url
from influencer_pipeline.dagster_layer.executors import executor_for
from influencer_pipeline.dagster_layer.notifier import notifier_for
from influencer_pipeline.dagster_layer.partitions import HORIZON_DAYS
from influencer_pipeline.dagster_layer.publishing import PublishingResource
from influencer_pipeline.dagster_layer.resources import (
    BlipCaptionerResource,
    ComfyUIImageEngineResource,
    EmbeddedImageEngineResource,
    EmbeddedTrainerResource,
    EspeakVoiceResource,
    KohyaTrainerResource,
    LocalMediaStoreResource,
    OpenAIChatWriterResource,
    OpenAISpeechVoiceResource,
    S3MediaStoreResource,
    SidecarCaptionerResource,
    TemplateWriterResource,
    UploadPolicy,
    resources_for,
)
from influencer_pipeline.dagster_layer.settings import (
    SECRET_ENV_VARS,
    Settings,
    SettingsError,
    horizon_days_at_import,
    load_settings,
)
from influencer_pipeline.definitions import build_definitions
from influencer_pipeline.errors import InputError
from influencer_pipeline.publishing.ledger import shared_ledger

ROOT = Path(__file__).resolve().parents[2]


def test_every_problem_is_reported_at_once_with_its_variable_rule_and_fix() -> None:
    env = {
        "CONTENT_SCHEDULE_HOUR": "seven",
        "CONTENT_LEAD_DAYS": "20",
        "CONTENT_TIMEZONE": "Mars/Base",
        "UPLOAD_SETTLE_SECONDS": "-5",
        "PUBLISH_MODE": "live",  # without INFLUENCER_TOKEN_KEYS
        "DAGSTER_EXECUTOR": "celery",  # without CELERY_BROKER_URL / CELERY_RESULT_BACKEND
        "IMAGE_DEVICE": "gpu0",
        "NOTIFY_WEBHOOK_URLS": "https://hooks.example.com/run",  # without NOTIFY_WEBHOOK_SECRET
    }
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env)
    problems = {problem.where: problem for problem in raised.value.problems}
    assert set(problems) == {
        "CONTENT_SCHEDULE_HOUR='seven'",
        "CONTENT_LEAD_DAYS=20",
        "CONTENT_TIMEZONE='Mars/Base'",
        "UPLOAD_SETTLE_SECONDS=-5",
        "INFLUENCER_TOKEN_KEYS",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "IMAGE_DEVICE='gpu0'",
        "NOTIFY_WEBHOOK_SECRET",
    }
    assert all(isinstance(p, InputError) and p.rule and p.fix for p in problems.values())
    message = str(raised.value)
    assert message.startswith("the environment of the Dagster code location has 9 problems:")
    assert "- CONTENT_SCHEDULE_HOUR='seven': must be a whole number. Fix: e.g. CONTENT_SCHEDULE_HOUR=6" in message
    assert "hooks.example.com" not in message, "a credential-bearing variable's value is never echoed"


def test_unset_and_empty_variables_mean_the_embedded_defaults() -> None:
    assert Settings.from_env({}) == Settings.from_env({"KOHYA_SD_SCRIPTS": "", "COMFYUI_URL": " ", "WORK_DIR": ""})
    resources = resources_for(Settings.from_env({}))
    assert {name: type(resource) for name, resource in resources.items()} == {
        "media": LocalMediaStoreResource,
        "captioner": SidecarCaptionerResource,
        "upload_policy": UploadPolicy,
        "trainer": EmbeddedTrainerResource,
        "image_engine": EmbeddedImageEngineResource,
        "writer": TemplateWriterResource,
        "voice": EspeakVoiceResource,
        "publishing": PublishingResource,
    }
    assert resources["trainer"].default_preset == "embedded-tiny"
    assert Path(resources["media"].root).is_absolute() and Path(resources["trainer"].work_dir).is_absolute()


@pytest.mark.parametrize(
    ("env", "role", "expected", "engine"),
    [
        ({"MEDIA_S3_BUCKET": "media"}, "media", S3MediaStoreResource, "s3"),
        ({"CAPTION_MODEL": "/models/blip"}, "captioner", BlipCaptionerResource, "blip"),
        ({"KOHYA_SD_SCRIPTS": "/opt/sd-scripts"}, "trainer", KohyaTrainerResource, "kohya"),
        ({"COMFYUI_URL": "http://comfy:8188"}, "image_engine", ComfyUIImageEngineResource, "comfyui"),
        ({"OPENROUTER_API_KEY": "sk-or-1"}, "writer", OpenAIChatWriterResource, "openai-chat"),
        ({"WRITER_BASE_URL": "http://llm:8000/v1"}, "writer", OpenAIChatWriterResource, "openai-chat"),
        ({"TTS_BASE_URL": "http://tts:8000/v1"}, "voice", OpenAISpeechVoiceResource, "openai-speech"),
        ({"TTS_API_KEY": "sk-tts"}, "voice", EspeakVoiceResource, "espeak-ng"),  # a key alone: no API to call
    ],
)
def test_each_variable_picks_its_engine_subclass(env: dict, role: str, expected: type, engine: str) -> None:
    resource = resources_for(Settings.from_env(env))[role]
    assert type(resource) is expected and resource.engine == engine


def test_kohya_settings_reach_its_resource() -> None:
    env = {
        "KOHYA_SD_SCRIPTS": "/opt/sd-scripts",
        "KOHYA_ACCELERATE": "accelerate launch --num_cpu_threads_per_process 2",
        "KOHYA_TOKENIZER_CACHE_DIR": "/opt/tokenizers",
        "TRAINING_DEVICE": "cuda:1",
        "WORK_DIR": "/data/work",
    }
    trainer = resources_for(Settings.from_env(env))["trainer"]
    assert isinstance(trainer, KohyaTrainerResource)
    assert (trainer.sd_scripts, trainer.tokenizer_cache_dir, trainer.device) == (
        "/opt/sd-scripts",
        "/opt/tokenizers",
        "cuda:1",
    )
    assert trainer.work_dir == "/data/work" and trainer.default_preset == "sd15-standard"
    with pytest.raises(SettingsError, match="TRAINING_DEVICE=mps"):
        Settings.from_env({**env, "TRAINING_DEVICE": "mps"})


SECRETS = {name: f"{name.lower()}-value-9f3e" for name in SECRET_ENV_VARS}


def test_secrets_reach_resources_as_env_var_names_and_their_values_nowhere() -> None:
    env = {**SECRETS, "MEDIA_S3_BUCKET": "media", "PUBLISH_MODE": "live"}
    settings = Settings.from_env(env)
    assert not [value for value in SECRETS.values() if value in repr(settings)], "settings hold values"

    defs = build_definitions(settings)
    snapshot = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))
    assert not [value for value in SECRETS.values() if value in snapshot], "a resource's config holds a value"
    for name in SECRET_ENV_VARS:
        assert f'"{name}"' in snapshot, f"{name} does not reach a resource as an EnvVar"
    assert isinstance(defs.resources["image_engine"], ComfyUIImageEngineResource)


def test_definitions_load_with_an_empty_environment_and_use_the_settings_they_are_given() -> None:
    settings = Settings.from_env({"CONTENT_SCHEDULE_HOUR": "7", "CONTENT_TIMEZONE": "Europe/Rome"})
    defs = build_definitions(settings)
    dg.Definitions.validate_loadable(defs)
    [schedule] = defs.get_repository_def().schedule_defs
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 7 * * *", "Europe/Rome")
    empty = build_definitions(Settings.from_env({}))
    dg.Definitions.validate_loadable(empty)
    assert empty.get_repository_def().get_schedule_def("content_calendar").cron_schedule == "0 6 * * *"
    assert empty.executor.name == executor_for(Settings().executor).name


def test_load_settings_is_the_build_in_progress_else_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("CONTENT_SCHEDULE_HOUR", "9")
    assert load_settings().calendar.hour == 9  # outside a build: read now
    seen = []
    monkeypatch.setattr(
        "influencer_pipeline.definitions.load_defs_folder", lambda: (seen.append(load_settings()), dg.Definitions())[1]
    )
    given = Settings.from_env({})
    build_definitions(given)
    assert seen == [given] and seen[0] is given and load_settings().calendar.hour == 9


def test_the_horizon_is_read_at_import_and_a_different_one_is_refused_at_build() -> None:
    assert horizon_days_at_import({}) == 14 and horizon_days_at_import({"CONTENT_HORIZON_DAYS": "30"}) == 30
    for bad in ("400", "-1", "two weeks"):
        with pytest.raises(SettingsError, match=re.escape(f"CONTENT_HORIZON_DAYS={bad!r}: must be a whole number")):
            horizon_days_at_import({"CONTENT_HORIZON_DAYS": bad})
    other = str(HORIZON_DAYS + 1)
    with pytest.raises(InputError, match=f"is {other} in these settings, but the date partitions were built with"):
        build_definitions(Settings.from_env({"CONTENT_HORIZON_DAYS": other}))


def test_the_accounts_database_defaults_to_where_the_accounts_command_puts_it(tmp_path) -> None:
    settings = Settings.from_env({"DAGSTER_HOME": str(tmp_path)})
    assert settings.publishing.accounts_default_url == accounts_default_url({"DAGSTER_HOME": str(tmp_path)})
    assert resources_for(settings)["publishing"].accounts_url == accounts_default_url({"DAGSTER_HOME": str(tmp_path)})


def test_publishing_opens_what_it_owns_in_setup_and_releases_it_in_teardown(tmp_path, monkeypatch) -> None:
    disposed: list[Engine] = []
    real_dispose = Engine.dispose
    monkeypatch.setattr(Engine, "dispose", lambda self, *a, **kw: (disposed.append(self), real_dispose(self, *a, **kw)))
    resource = PublishingResource(
        mode="live", work_dir=str(tmp_path / "work"), accounts_url=f"sqlite:///{tmp_path / 'accounts.db'}"
    )
    for _ in range(2):  # two executions (two sensor ticks): the same shared ledger, a fresh accounts connection
        with dg.build_resources({"publishing": resource}) as resources:
            publishing = resources.publishing
            assert publishing.ledger() is shared_ledger(f"sqlite:///{(tmp_path / 'work').resolve()}/post_ledger.db")
            accounts = publishing._accounts
            assert accounts is not None and accounts.store.url.endswith("accounts.db")
            assert accounts.store.engine not in disposed
        assert accounts.store.engine in disposed, "the accounts connection outlived its execution"
        assert publishing._accounts is None
    assert publishing.ledger().engine not in disposed, "the process-wide ledger must stay open for the next tick"
    with pytest.raises(RuntimeError, match="setup_for_execution"):
        resource.publisher_and_token("youtube", "ava", store=None)  # live, outside an execution


def test_outbox_mode_opens_no_accounts(tmp_path) -> None:
    with dg.build_resources({"publishing": PublishingResource(work_dir=str(tmp_path))}) as resources:
        assert resources.publishing._accounts is None and resources.publishing.ledger() is not None


def test_notifier_and_executor_come_from_the_same_settings() -> None:
    settings = Settings.from_env({"NOTIFY_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x"})
    notifier = notifier_for(settings.notifier)
    assert isinstance(notifier.slack_webhook_url, dg.EnvVar) and notifier.webhook_urls == ""
    celery = {"DAGSTER_EXECUTOR": "Celery", "CELERY_BROKER_URL": "redis://b", "CELERY_RESULT_BACKEND": "redis://b"}
    assert executor_for(Settings.from_env(celery).executor).name == "celery"
    with pytest.raises(SettingsError, match="DAGSTER_EXECUTOR='ray': must be one of multiprocess, celery, k8s"):
        Settings.from_env({"DAGSTER_EXECUTOR": "ray"})


def test_only_the_settings_module_reads_the_environment() -> None:
    """The Dagster layer's one place: `os.environ`/`getenv` anywhere else in it would bypass `Settings`."""
    package = ROOT / "influencer_pipeline"
    files = [*(package / "defs").rglob("*.py"), *(package / "dagster_layer").rglob("*.py"), package / "definitions.py"]
    readers = [
        str(path.relative_to(ROOT))
        for path in files
        if re.search(r"os\.environ|getenv\(", path.read_text()) and path.name != "settings.py"
    ]
    assert readers == []
