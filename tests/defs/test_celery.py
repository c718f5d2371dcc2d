"""dagster-celery for real: `DAGSTER_EXECUTOR=celery` (influencer_pipeline/dagster_layer/executors.py), a Redis
broker and result backend, and two local worker processes started as the deployment docs say, with
`dagster-celery worker start -A dagster_celery.app -y resources/celery/worker.yaml`: `gpu@<host>` listens on the
`gpu` queue only, `cpu@<host>` on the default `dagster` queue only. The real `persona_pipeline` job runs on the
embedded tiny engines; which worker ran which step is read from the engine event that dagster-celery's task
writes in the worker ("Executing steps ... in celery worker", metadata "Celery worker": the worker's name).

The instance is SQLite under a temp DAGSTER_HOME, shared by the run (in `dagster job execute`) and both workers:
they run on this machine. Several boxes need the shared PostgreSQL instance and the S3 media store instead.

Redis unreachable: skipped locally, failed when CI=true.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from influencer_pipeline.dagster_layer.executors import EXECUTOR_ENV
from influencer_pipeline.definitions import build_definitions
from tests.images import make_photo
from tests.support.jobs import run_config_for
from tests.support.services import require_service
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # dagster-celery runs `celery` from PATH: this venv's, first
WORKER_YAML = ROOT / "resources" / "celery" / "worker.yaml"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
CLAIM_PREFIX, CLAIM_SECONDS = "influencer-pipeline:test-celery:db", 900
GPU_QUEUE, DEFAULT_QUEUE = "gpu", "dagster"
CPU_STEPS = {"training_images", "image_captions"}
GPU_STEPS = {"lora_weights", "lora_samples"}
TRAINING_CONFIG = {
    "ops": {
        "lora_weights": {"config": {"preset": "embedded-tiny", "epochs": 1, "batch_size": 2}},
        "lora_samples": {"config": {"prompts": ["ohwx woman, portrait"], "steps": 2}},
    }
}
QUEUED_SECONDS = 5  # how long a GPU step must sit untouched in the `gpu` queue while only the CPU worker runs
# Set on the developer's machine, these would switch the run to other engines or stores.
ENGINE_VARS = ("MEDIA_S3_BUCKET", "KOHYA_SD_SCRIPTS", "COMFYUI_URL", "CAPTION_MODEL", "OPENROUTER_API_KEY")


class Broker:
    """A Redis database of this test's own, as broker and result backend: queue names stay real (`gpu`, `dagster`),
    so a second test session on this machine (another checkout, CI job or helper) must not share the database, or
    its workers would take this test's tasks. Databases 5-15 are claimed with SET NX in database 0."""

    def __init__(self) -> None:
        import redis

        self.claims = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
        self.db = next((db for db in range(5, 16) if self._claim(db)), None)
        assert self.db is not None, "every Redis database 5-15 is claimed by another test session"
        self.url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.db}"
        self.client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.db)
        self.client.flushdb()

    def _claim(self, db: int) -> bool:
        return bool(self.claims.set(f"{CLAIM_PREFIX}{db}", os.getpid(), nx=True, ex=CLAIM_SECONDS))

    def messages_waiting(self, queue: str) -> int:
        """Messages in a queue (kombu keeps one Redis list per priority band: `gpu`, `gpu\\x06\\x163`...)."""
        name = queue.encode()
        bands = [k for k in self.client.scan_iter(match=f"{queue}*") if k == name or k.startswith(name + b"\x06\x16")]
        return sum(self.client.llen(k) for k in bands)

    def release(self) -> None:
        self.client.flushdb()
        self.claims.delete(f"{CLAIM_PREFIX}{self.db}")


# ---- fixtures ------------------------------------------------------------------------------------------------------


class Workers:
    """`dagster-celery worker start` processes, each in its own process group (it runs `celery` as a child)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, queue: str) -> str:
        """Start a worker named `<name>@<host>` on one queue; return that name once Celery says it is ready."""
        log = self.log_dir / f"{name}.log"
        cmd = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
        cmd += ["-y", str(WORKER_YAML), "-q", queue, "-n", name]
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[name] = proc
        ready = re.compile(rf"\b({re.escape(name)}@\S+) ready\.")
        found = wait_until(
            lambda: ready.search(log.read_text()), f"worker {name}", 60, processes=[proc], details=self.logs
        )
        return found.group(1)

    def received(self, name: str) -> int:
        """Step tasks this worker took from the broker, by its own log."""
        return len(re.findall(r"Task execute_plan\[[\w-]+\] received", (self.log_dir / f"{name}.log").read_text()))

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {p.name} (last {tail} chars) ---\n{p.read_text()[-tail:]}" for p in self.log_paths())

    def log_paths(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.log"))

    def stop(self) -> None:
        """KILL each whole group: `dagster-celery worker start` and the `celery` worker it runs. (A TERM would reach
        the parent at once but leave Celery in a warm shutdown that waits for a running step.)"""
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(10)


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@pytest.fixture
def celery_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, Workers, Broker]]:
    """A DAGSTER_HOME, a media root with persona `ava`, an empty broker; workers are killed on the way out."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    broker = Broker()
    home, media = tmp_path / "dagster_home", tmp_path / "media"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "resources" / "dagster" / "dagster.local.yaml").read_text())
    (media / "uploads" / "ava").mkdir(parents=True)
    (media / "uploads" / "ava" / "persona.yaml").write_bytes(b"trigger_word: ohwx\nclass_word: woman\n")
    env = {k: v for k, v in os.environ.items() if k not in ENGINE_VARS} | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_HOME": str(home),
        "MEDIA_ROOT": str(media),
        "WORK_DIR": str(tmp_path / "work"),
        EXECUTOR_ENV: "celery",
        "CELERY_BROKER_URL": broker.url,
        "CELERY_RESULT_BACKEND": broker.url,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # two workers and the run on 2 cores: no thread oversubscription
    }
    (tmp_path / "logs").mkdir()
    workers = Workers(env, tmp_path / "logs")
    try:
        with instance_at(home) as instance:
            instance.add_dynamic_partitions("personas", ["ava"])
        yield env, media, workers, broker
    finally:
        workers.stop()
        broker.release()


def instance_at(home: Path) -> dg.DagsterInstance:
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def execute_command(env: dict[str, str], job: str, config: dict, tmp: Path) -> list[str]:
    """`dagster job execute` for persona `ava`: the run's orchestration in that process, its steps on Celery."""
    config_path = tmp / f"{job}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    target = ["-m", "influencer_pipeline.definitions", "-a", "defs", "-j", job]
    tags = json.dumps({"dagster/partition": "ava"})
    return [sys.executable, "-m", "dagster", "job", "execute", *target, "--tags", tags, "-c", str(config_path)]


# ---- what the run's event log says -----------------------------------------------------------------------------


def only_run(env: dict[str, str]) -> dg.DagsterRun | None:
    with instance_at(Path(env["DAGSTER_HOME"])) as instance:
        runs = instance.get_runs()
    assert len(runs) <= 1, runs
    return runs[0] if runs else None


def celery_record(env: dict[str, str], run_id: str) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """(queue each step was submitted to, worker that executed it, steps that succeeded), from the event log."""
    queues, workers, succeeded = {}, {}, set()
    with instance_at(Path(env["DAGSTER_HOME"])) as instance:
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type_value == "ENGINE_EVENT":
                submitted = re.match(r'Submitting celery task for step "(\w+)" to queue "(\w+)"', event.message or "")
                if submitted:
                    queues[submitted.group(1)] = submitted.group(2)
                metadata = event.event_specific_data.metadata
                if "Celery worker" in metadata:
                    assert event.step_key not in workers, f"{event.step_key} executed twice"
                    workers[event.step_key] = metadata["Celery worker"].value
            elif event.event_type_value == "STEP_SUCCESS":
                succeeded.add(event.step_key)
    return queues, workers, succeeded


def wait_for(predicate: Callable[[], object], timeout: float, what: str, context: Callable[[], str]):
    return wait_until(predicate, what, timeout, interval=0.5, details=context)


def upload_photos(media: Path, count: int = 10) -> None:
    """Ten photos: the fewest that pass `training_images`' blocking `min_images` check."""
    for i in range(count):
        make_photo(i, size=(600, 600)).save(media / "uploads" / "ava" / f"{i:02d}.png")


def write_dataset(media: Path, count: int = 4) -> None:
    """A curated, captioned dataset: what `persona_training` expects the datasets group to have left."""
    dataset = media / "personas" / "ava" / "dataset"
    dataset.mkdir(parents=True)
    for i in range(count):
        make_photo(i, size=(512, 512)).save(dataset / f"{i:016x}.png")
        (dataset / f"{i:016x}.txt").write_text("ohwx woman\n")


# ---- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_steps_run_on_the_gpu_worker_and_the_rest_on_the_cpu_worker(celery_env, tmp_path) -> None:
    env, media, workers, _ = celery_env
    upload_photos(media)
    gpu = workers.start("gpu", GPU_QUEUE)
    cpu = workers.start("cpu", DEFAULT_QUEUE)

    log = tmp_path / "run.log"
    with log.open("w") as out:
        done = subprocess.run(
            execute_command(env, "persona_pipeline", TRAINING_CONFIG, tmp_path),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=240,
            check=False,
        )
    context = f"--- run ---\n{log.read_text()[-6000:]}\n{workers.logs()}"
    run = only_run(env)
    assert done.returncode == 0 and run is not None and run.status == dg.DagsterRunStatus.SUCCESS, context

    queues, executed_by, succeeded = celery_record(env, run.run_id)
    assert succeeded == CPU_STEPS | GPU_STEPS, context
    assert queues == {step: GPU_QUEUE for step in GPU_STEPS} | {step: DEFAULT_QUEUE for step in CPU_STEPS}, context
    assert executed_by == {step: gpu for step in GPU_STEPS} | {step: cpu for step in CPU_STEPS}, context
    # The workers' own logs agree: each received exactly its own steps' tasks.
    assert (workers.received("gpu"), workers.received("cpu")) == (len(GPU_STEPS), len(CPU_STEPS)), context

    # One LoRA version (media/keys.py: personas/<persona>/lora/<version>/), with its weights and sample grid.
    lora = media / "personas" / "ava" / "lora"
    assert [p.stat().st_size > 0 for p in lora.rglob("ava.safetensors")] == [True]
    assert len(list(lora.rglob("samples/grid.png"))) == 1


@pytest.mark.slow
def test_a_gpu_step_waits_in_the_gpu_queue_until_a_gpu_worker_takes_it(celery_env, tmp_path) -> None:
    """An idle worker on the default queue never takes a GPU step; a `gpu` worker started later does."""
    env, media, workers, broker = celery_env
    write_dataset(media)
    cpu = workers.start("cpu", DEFAULT_QUEUE)

    log = tmp_path / "run.log"
    out = log.open("w")
    cmd = execute_command(env, "persona_training", TRAINING_CONFIG, tmp_path)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def context() -> str:
            return f"--- run ---\n{log.read_text()[-6000:]}\n{workers.logs()}"

        def submitted() -> bool:
            assert proc.poll() is None, f"the run ended early with {proc.returncode}\n{context()}"
            run = only_run(env)
            return run is not None and "lora_weights" in celery_record(env, run.run_id)[0]

        wait_for(submitted, 90, "lora_weights to be submitted", context)
        time.sleep(QUEUED_SECONDS)
        run = only_run(env)
        queues, executed_by, _ = celery_record(env, run.run_id)
        assert queues == {"lora_weights": GPU_QUEUE}, context()
        assert executed_by == {}, f"a GPU step ran with no gpu worker up: {executed_by}\n{context()}"
        assert broker.messages_waiting(GPU_QUEUE) == 1, context()
        assert workers.received("cpu") == 0, context()
        assert proc.poll() is None and only_run(env).status == dg.DagsterRunStatus.STARTED, context()

        gpu = workers.start("gpu", GPU_QUEUE)
        proc.wait(180)
        run = only_run(env)
        assert proc.returncode == 0 and run.status == dg.DagsterRunStatus.SUCCESS, context()
        queues, executed_by, succeeded = celery_record(env, run.run_id)
        assert succeeded == GPU_STEPS, context()
        assert executed_by == {step: gpu for step in GPU_STEPS}, context()
        assert cpu not in executed_by.values() and workers.received("cpu") == 0, context()
        assert broker.messages_waiting(GPU_QUEUE) == 0, context()
    finally:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(10)
        out.close()


def test_every_gpu_pool_step_and_only_those_go_to_the_gpu_queue(monkeypatch) -> None:
    """What the celery executor reads: each execution step's `dagster-celery/queue` tag, in every job."""
    from dagster._core.execution.api import create_execution_plan
    from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

    monkeypatch.setenv(EXECUTOR_ENV, "celery")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://broker:6379/0")  # read to configure the executor, not contacted
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://broker:6379/1")
    repo = build_definitions().get_repository_def()
    gpu_steps = set()
    for job in repo.get_all_jobs():
        assert job.executor_def.name == "celery", job.name
        for step in create_execution_plan(job, run_config=run_config_for(job)).steps:
            queue = step.tags.get(DAGSTER_CELERY_QUEUE_TAG)
            assert (step.pool == "gpu") == (queue == GPU_QUEUE), f"{job.name}:{step.key} pool={step.pool} {queue=}"
            assert queue in (None, GPU_QUEUE), f"{job.name}:{step.key} goes to an unknown queue {queue!r}"
            if queue:
                gpu_steps.add(step.key)
    assert gpu_steps == GPU_STEPS | {"post_images"}


@pytest.mark.parametrize("var", ["CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"])
def test_workers_and_runs_read_the_broker_from_the_same_env_vars(monkeypatch, var) -> None:
    """dagster-celery's CLI resolves the workers' yaml from these env vars; the run's executor fails without them."""
    from dagster._core.execution.api import create_execution_plan
    from dagster_celery.cli import get_validated_config

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://broker:6379/0")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://broker:6379/1")
    validated = get_validated_config(str(WORKER_YAML))
    assert (validated["broker"], validated["backend"]) == ("redis://broker:6379/0", "redis://broker:6379/1")
    # Steps run in the worker's process: Celery's prefork children are daemonic and cannot start the curation pool.
    assert validated["config_source"]["worker_pool"] == "solo"

    monkeypatch.setenv(EXECUTOR_ENV, "celery")
    job = build_definitions().get_repository_def().get_job("persona_training")
    monkeypatch.delenv(var)
    with pytest.raises(dg.DagsterInvalidConfigError, match=var):
        create_execution_plan(job, run_config=run_config_for(job))
