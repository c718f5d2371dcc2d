"""The real n8n that scripts/n8n-install.sh installs, driven the way docs/N8N.md tells an operator to: the CLI
imports the workflow files, the credentials and publishes the workflows, then `n8n start` serves their webhooks.

Each `N8n` has its own user folder (database, settings) and encryption key, so tests never touch a developer's
own n8n. Without the install a test skips, naming the script; under CI=true it fails instead, because CI installs
it first (.ci/run).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any

import requests

from tests.support.services import free_port, unavailable
from tests.support.waiting import wait_until

N8N_VERSION = "2.41.1"
ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "n8n-install.sh"


def install_dir() -> Path:
    """Where scripts/n8n-install.sh puts n8n (same default and override as the script)."""
    if os.environ.get("N8N_CACHE_DIR"):
        return Path(os.environ["N8N_CACHE_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "influencer-pipeline" / f"n8n-{N8N_VERSION}"


def require_n8n() -> Path:
    """The install's bin/ folder (`n8n` and the `node` it needs); skips locally, fails under CI=true."""
    home = install_dir()
    installed = list(home.glob(f".installed-n8n-{N8N_VERSION}-node-*"))
    if installed and (home / "bin" / "n8n").exists():
        return home / "bin"
    unavailable(
        f"n8n {N8N_VERSION} is not installed in {home}: run {INSTALL_SCRIPT.relative_to(ROOT)}",
        ".ci/run installs it before the tests",
    )


class N8n:
    """One n8n instance: CLI commands and the server share its user folder and encryption key."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None):
        self.bin = require_n8n()
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "n8n.log"
        folder.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(folder),
            "N8N_USER_FOLDER": str(folder),
            "N8N_ENCRYPTION_KEY": "influencer-pipeline-tests-encryption-key",
            "N8N_PORT": str(self.port),
            "N8N_LISTEN_ADDRESS": "127.0.0.1",
            "N8N_HOST": "127.0.0.1",
            "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_TEMPLATES_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false",
            "N8N_SECURE_COOKIE": "false",
            "N8N_LOG_LEVEL": "info",
            "GENERIC_TIMEZONE": "UTC",
            "TZ": "UTC",
        } | (env or {})

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Runs `n8n <args>` and returns it; fails the test with n8n's output when it exits non-zero."""
        env = self.env | {"N8N_RUNNERS_BROKER_PORT": str(free_port())}  # beside a running server
        done = subprocess.run(
            ["n8n", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert done.returncode == 0, f"n8n {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    def import_credentials(self, credentials: list[dict[str, Any]]) -> None:
        path = self.folder / "credentials.json"
        path.write_text(json.dumps(credentials))
        try:
            self.cli("import:credentials", f"--input={path}")
        finally:
            path.unlink()

    @contextmanager
    def serving(self) -> Iterator[N8n]:
        """`n8n start` on loopback until the block ends; waits for /healthz/readiness."""
        env = self.env | {"N8N_RUNNERS_BROKER_PORT": str(free_port())}
        with self.log.open("a") as log:
            proc = subprocess.Popen(
                ["n8n", "start"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_until(self._ready, "n8n to get ready", 300, interval=1, processes=[proc], details=self.log_tail)
            yield self
        finally:
            for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                with suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, sig)
                    proc.wait(grace)

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz/readiness", timeout=10).ok
        except requests.RequestException:  # not listening yet, or too busy starting to answer
            return False

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def webhook(self, path: str, body: bytes, headers: dict[str, str], timeout: float = 1800) -> requests.Response:
        """POST to a published workflow's production webhook (`/webhook/<path>`)."""
        return requests.post(f"{self.url}/webhook/{path}", data=body, headers=headers, timeout=timeout)

    def wait_for_webhook(self, path: str) -> None:
        """n8n registers a published workflow's webhooks during startup. Until then a GET answers 404 "The requested
        webhook ... is not registered"; once the POST webhook is registered, 404 "not registered for GET requests"."""
        wait_until(
            lambda: "not registered for GET" in requests.get(f"{self.url}/webhook/{path}", timeout=10).text,
            f"webhook {path} to be registered",
            120,
            interval=1,
            details=self.log_tail,
        )

    # --- n8n's own record of what ran ------------------------------------------------------------------------

    def executions(self, workflow_id: str) -> list[dict[str, Any]]:
        """The workflow's executions, oldest first, read from n8n's SQLite database: `id`, `status` (`new`,
        `running`, `success`, `error`, ...), and for finished ones `runData` (node name -> runs) and `nodes`."""
        database = self.folder / ".n8n" / "database.sqlite"
        if not database.exists():
            return []
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as db:
            rows = db.execute(
                "SELECT e.id, e.status, d.data FROM execution_entity e LEFT JOIN execution_data d"
                " ON d.executionId = e.id WHERE e.workflowId = ? ORDER BY CAST(e.id AS INTEGER)",
                (workflow_id,),
            ).fetchall()
        found = []
        for execution_id, status, data in rows:
            run_data = unflatten(data)["resultData"]["runData"] if data and status not in ("new", "running") else {}
            found.append({"id": str(execution_id), "status": status, "runData": run_data, "nodes": set(run_data)})
        return found

    def wait_for_execution(self, workflow_id: str, known: int, parked: bool = False) -> dict[str, Any]:
        """The first execution after the `known` ones, once it has finished (a webhook can answer before), or with
        `parked`, also once a Wait node has parked it (`waiting`; n8n records that a moment after it answers)."""
        unsettled = {"new", "running"} | (set() if parked else {"waiting"})

        def settled() -> dict[str, Any] | None:
            executions = self.executions(workflow_id)
            return (
                executions[known] if len(executions) > known and executions[known]["status"] not in unsettled else None
            )

        return wait_until(settled, f"a finished execution of {workflow_id}", 600, interval=0.5, details=self.log_tail)


def unflatten(text: str) -> Any:
    """n8n stores execution data serialised with `flatted` (https://github.com/WebReflection/flatted): a JSON array
    whose first entry is the root, where every string inside an object or array is the index of the entry that
    holds the real value (a string, or another object), so shared and circular references survive."""
    values = json.loads(text)
    revived: dict[int, Any] = {}

    def revive(index: int) -> Any:
        value = values[index]
        if index in revived or not isinstance(value, dict | list):
            return revived.get(index, value)
        if isinstance(value, list):
            revived[index] = out = []
            out.extend(resolve(item) for item in value)
            return out
        revived[index] = out = {}
        out.update({key: resolve(item) for key, item in value.items()})
        return out

    def resolve(item: Any) -> Any:
        return revive(int(item)) if isinstance(item, str) else item

    return revive(0)
