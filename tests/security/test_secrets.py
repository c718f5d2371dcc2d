"""Credentials readable without a token (issue 11): URL settings were passed to resources as plain strings, so
the webserver showed `POST_LEDGER_URL`'s `user:password@` (and the other URLs) to anyone who could reach it.

Every documented variable that can carry a credential is set to a recognisable fake secret (URLs with
`user:password@`), then nothing the definitions, the running webserver or a run records may contain one:

* the repository snapshot the code location hands the webserver (everything the UI can show about it);
* the GraphQL answers of a running webserver: resources and their configured values, env var usage;
* a real run's event log and compute logs (every file under DAGSTER_HOME) and its process output, for a run
  whose writer answers with an error that echoes the request's credentials.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import requests
from cryptography.fernet import Fernet
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value

from influencer_pipeline.dagster_layer.settings import SECRET_ENV_VARS
from tests.content.llm_standin import LLMStandin, Status
from tests.support.services import free_port
from tests.support.webserver import stop, wait_until_up

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A documented variable whose name says it holds a credential, or a URL (which can hold one).
CREDENTIAL_NAME = re.compile(r"\b[A-Z][A-Z0-9_]*(?:_URLS?|_KEYS?|_KEY_ID|_SECRET|_TOKEN|_PASSWORD|_DB|_BACKEND)\b")
NOT_SECRET = {"DAGSTER_COMPUTE_LOG_BUCKET", "DAGSTER_PG_DB"}  # a bucket and a database name
REPOSITORY = {"repositoryLocationName": "influencer_pipeline", "repositoryName": "__repository__"}
RESOURCES = """
query Resources($r: RepositorySelector!) {
  repositoryOrError(repositorySelector: $r) {
    __typename
    ... on Repository {
      allTopLevelResourceDetails {
        name resourceType
        configFields { name description defaultValueAsJson }
        configuredValues { key value type }
        nestedResources { name type }
      }
    }
  }
  utilizedEnvVarsOrError(repositorySelector: $r) {
    __typename
    ... on EnvVarWithConsumersList { results { envVarName envVarConsumers { type name } } }
  }
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename } } }
  }
}
"""
DAY = date.today().isoformat()  # inside the calendar: it runs up to 14 days ahead


class Fakes:
    """One recognisable fake per credential, and every form of it that would count as a leak."""

    def __init__(self, closed_port: int) -> None:
        self.tag = uuid.uuid4().hex[:10]
        self.env: dict[str, str] = {}
        self.leaks: list[str] = []
        for name in documented_credential_vars():
            self.env[name] = self._fake(name, closed_port)

    def _fake(self, name: str, port: int) -> str:
        secret = f"{name.lower().replace('_', '-')}-{self.tag}"
        self.leaks.append(secret)
        if name == "INFLUENCER_TOKEN_KEYS":  # must be a real Fernet key to load; it is its own leak marker
            key = Fernet.generate_key().decode()
            self.leaks.append(key)
            return key
        if name == "DAGSTER_GRAPHQL_TOKEN":
            return secret
        if name == "NOTIFY_SLACK_WEBHOOK_URL":  # Slack's credential is the path
            return f"http://127.0.0.1:{port}/services/T000/B000/{secret}"
        if name.endswith(("_URL", "_URLS", "_DB", "_BACKEND")):
            scheme = "postgresql+psycopg2" if name in ("POST_LEDGER_URL", "INFLUENCER_ACCOUNTS_DB") else "http"
            scheme = "redis" if name.startswith("CELERY_") else scheme
            user = name.split("_")[0].lower()
            self.leaks.append(base64.b64encode(f"{user}:{secret}".encode()).decode())  # HTTP Basic of the userinfo
            return f"{scheme}://{user}:{secret}@127.0.0.1:{port}/{user}"
        return secret

    def found_in(self, text: str) -> list[str]:
        return [leak for leak in self.leaks if leak in text]


def documented_credential_vars() -> list[str]:
    names: set[str] = set()
    for doc in DOCS:
        names |= set(CREDENTIAL_NAME.findall(doc.read_text()))
    return sorted(names - NOT_SECRET)


def test_the_corpus_covers_every_documented_credential_and_every_resource_secret() -> None:
    names = documented_credential_vars()
    for expected in ("POST_LEDGER_URL", "COMFYUI_URL", "WRITER_BASE_URL", "TTS_BASE_URL", "S3_ENDPOINT_URL"):
        assert expected in names, f"{expected} is no longer documented in README/docs"
    assert set(SECRET_ENV_VARS) <= set(names), set(SECRET_ENV_VARS) - set(names)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Fakes:
    found = Fakes(free_port())
    for name, value in found.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MEDIA_S3_BUCKET", "media")  # the S3 store: its endpoint and keys are in the definitions
    monkeypatch.setenv("WORK_DIR", str(tmp_path / "work"))
    return found


def test_no_credential_is_in_the_definitions_the_webserver_receives(fakes: Fakes) -> None:
    from influencer_pipeline.definitions import build_definitions

    repository = build_definitions().get_repository_def()
    snapshot = serialize_value(RepositorySnap.from_def(repository))
    assert fakes.found_in(snapshot) == []
    # ...because they are env vars there, not because the settings went missing:
    for name in SECRET_ENV_VARS:
        assert f'"{name}"' in snapshot, f"{name} is not passed to any resource as an EnvVar"


@pytest.fixture
def webserver(fakes: Fakes, tmp_path: Path) -> Iterator[str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "resources" / "dagster" / "dagster.local.yaml", home / "dagster.yaml")
    port = free_port()
    env = os.environ | {"DAGSTER_HOME": str(home), "MEDIA_ROOT": str(tmp_path / "media")}
    cmd = [sys.executable, "-m", "influencer_pipeline.admin.webserver_auth", "-h", "127.0.0.1", "-p", str(port)]
    cmd += ["-w", str(ROOT / "workspace.yaml")]
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc, log)
        yield url
    finally:
        stop(proc)
        assert fakes.found_in(log.read_text()) == [], "the webserver logged a credential"


def test_the_running_webserver_shows_no_credential(webserver: str, fakes: Fakes) -> None:
    response = requests.post(
        f"{webserver}/graphql", json={"query": RESOURCES, "variables": {"r": REPOSITORY}}, timeout=60
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    location = data["workspaceOrError"]["locationEntries"][0]
    assert location["locationOrLoadError"]["__typename"] == "RepositoryLocation", location
    assert fakes.found_in(response.text) == []

    shown = {
        (resource["name"], value["key"]): value
        for resource in data["repositoryOrError"]["allTopLevelResourceDetails"]
        for value in resource["configuredValues"]
    }
    for where, name in [
        (("publishing", "ledger_url"), "POST_LEDGER_URL"),
        (("image_engine", "url"), "COMFYUI_URL"),
        (("writer", "base_url"), "WRITER_BASE_URL"),
        (("writer", "api_key"), "OPENROUTER_API_KEY"),
        (("voice", "base_url"), "TTS_BASE_URL"),
        (("voice", "api_key"), "TTS_API_KEY"),
        (("notifier", "ui_url"), "DAGSTER_UI_URL"),
        (("notifier", "webhook_urls"), "NOTIFY_WEBHOOK_URLS"),
    ]:
        assert shown[where] == {"key": where[1], "value": name, "type": "ENV_VAR"}, (where, shown.get(where))
    used = {entry["envVarName"] for entry in data["utilizedEnvVarsOrError"]["results"]}
    assert set(SECRET_ENV_VARS) <= used, set(SECRET_ENV_VARS) - used


def test_a_failing_run_records_no_credential_in_its_event_log_or_compute_logs(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """content_plan against a writer that refuses the request and echoes its Authorization header back."""
    home, media = tmp_path / "dagster_home", tmp_path / "media"
    home.mkdir()
    shutil.copy(ROOT / "resources" / "dagster" / "dagster.local.yaml", home / "dagster.yaml")
    monkeypatch.delenv("MEDIA_S3_BUCKET")  # local media: the run gets as far as the writer
    with LLMStandin(api_key=fakes.env["OPENROUTER_API_KEY"]) as writer:  # the stand-in checks the key it is sent
        writer.then(Status(401, message="Incorrect API key provided", echo_key=True))
        password = f"writer-base-url-{fakes.tag}"
        writer_url = writer.url.replace("http://", f"http://writer:{password}@")
        env = os.environ | {
            "DAGSTER_HOME": str(home),
            "MEDIA_ROOT": str(media),
            "WRITER_BASE_URL": writer_url,
        }
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions("personas", ["ava"])
        cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "influencer_pipeline.definitions"]
        cmd += ["-a", "defs", "--select", "content_plan", "--partition", f"{DAY}|ava"]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert len(writer.received) == 1, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr

    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.FAILURE, output[-3000:]
        records = instance.all_logs(run.run_id)
    events = "\n".join(serialize_value(record) for record in records)
    assert "refused the API key" in events and "127.0.0.1" in events  # the failure is there, told usefully
    assert fakes.found_in(events) == []
    assert fakes.found_in(output) == []
    stored = {path: path.read_bytes() for path in home.rglob("*") if path.is_file()}
    assert any("compute_logs" in str(path) or path.suffix in (".out", ".err") for path in stored), sorted(stored)
    leaked = {str(path): fakes.found_in(data.decode("utf-8", "replace")) for path, data in stored.items()}
    assert {path: found for path, found in leaked.items() if found} == {}


def test_clients_send_their_key_to_a_base_url_that_carries_credentials(tmp_path: Path) -> None:
    """A URL's user:password@ must not displace the API key: `requests` turns it into HTTP Basic and drops the
    Bearer header, so the key never reached the server and the run failed with a 401 that blamed the key."""
    from influencer_pipeline.content.openai_chat import OpenAIChatWriter
    from influencer_pipeline.personas import Persona
    from influencer_pipeline.voice.openai_speech import OpenAISpeechVoice
    from tests.voice.speech_standin import SpeechStandin

    key = "sk-test-0123456789abcdef-userinfo"
    ava = Persona(slug="ava", trigger_word="ohwx", class_word="woman", platforms=("instagram",), themes=("beaches",))
    with LLMStandin(api_key=key) as writer:
        url = writer.url.replace("http://", "http://proxy:pw-proxy@")
        OpenAIChatWriter(base_url=url, api_key=key, model="test/model", timeout_s=10).plan_day(ava, date.today(), 1)
        assert writer.received[0].headers["Authorization"] == f"Bearer {key}"
    with SpeechStandin(api_key=key) as speech:
        url = speech.url.replace("http://", "http://proxy:pw-proxy@")
        OpenAISpeechVoice(url, key, max_retries=0).speak("Hello there.", tmp_path / "voice.wav")
        assert speech.received[0].headers["Authorization"] == f"Bearer {key}"
