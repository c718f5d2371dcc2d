"""Which executor runs the steps of every job: chosen per deployment by `DAGSTER_EXECUTOR`, not per job.

- `multiprocess` (default): every step in a subprocess of the run worker (run config may pick `in_process`);
  one GPU box, the `gpu` pool guards it.
- `celery`: steps go to Celery queues on `CELERY_BROKER_URL` (Redis or RabbitMQ); GPU steps carry the op tag
  `dagster-celery/queue: gpu` (GPU_OP_TAGS), so only workers started with `-q gpu` on the GPU boxes take them,
  and everything else goes to the default `dagster` queue.
- `k8s`: each step in its own Kubernetes Job (`k8s_job_executor`); GPU steps request `nvidia.com/gpu` through
  their `dagster-k8s/config` op tag, so the scheduler places them on GPU nodes.

Why one switch: the asset code and op tags are the same on every deployment; only the instance and this variable
change (docs/DEPLOYMENT.md).
"""

from typing import TYPE_CHECKING

import dagster as dg

from influencer_pipeline.errors import InputError

if TYPE_CHECKING:
    from influencer_pipeline.dagster_layer.settings import ExecutorSettings

EXECUTOR_ENV = "DAGSTER_EXECUTOR"
EXECUTORS = ("multiprocess", "celery", "k8s")


def executor_for(settings: "ExecutorSettings") -> dg.ExecutorDefinition:
    """The executor `DAGSTER_EXECUTOR` names, as read and checked by `dagster_layer/settings.py`."""
    name = settings.name
    if name == "multiprocess":
        return forked_multiprocess_executor()
    if name == "celery":
        return celery_executor_from_env()
    if name == "k8s":
        return k8s_executor_from_env()
    raise InputError(
        EXECUTOR_ENV, f"got {name!r}; expected one of {', '.join(EXECUTORS)}", f"set {EXECUTOR_ENV}=multiprocess"
    )


def forked_multiprocess_executor() -> dg.ExecutorDefinition:
    """Dagster's default executor, with each step process forked from the run worker that has already loaded the code.

    Under `spawn` (Dagster's default) every step process starts a fresh interpreter and imports dagster and the code
    location again; under `forkserver` the run starts a fresh server that does it once per run (Python's forkserver
    is always a new interpreter, https://docs.python.org/3/library/multiprocessing.html#contexts-and-start-methods).
    Either costs seconds of a small machine, more than a short step. The run worker has loaded the job already, so
    on Linux each step process is a `fork` of it: nothing is imported again, and what a step still pays is its own
    instance (storage connections), execution plan and resources. Each step still runs in a process of its own, so
    a GPU step's memory is freed when it exits.

    Why fork is safe here: a run worker started by `dagster api execute_run` (PreloadedRunLauncher, Docker, k8s)
    has no other thread when it starts steps (tests/admin/test_run_launcher.py checks); one started by the code
    server (DefaultRunLauncher) has one, blocked waiting for a termination request and holding no lock a step uses.
    Heavy libraries (torch, diffusers, transformers, nudenet) are imported inside the steps that use them, so the
    parent holds no model or CUDA context to share. Dagster's config offers only `spawn` and
    `forkserver`, so the default (no `start_method` in run config) builds Dagster's multiprocess executor with
    `fork`; run config keeps every option of the default executor: `in_process`, or a `multiprocess.start_method`
    of its own (`forkserver` or `spawn`). Elsewhere than Linux the default is `forkserver` (fork is unsafe on macOS).
    """
    import sys

    from dagster._core.definitions.executor_definition import _core_multiprocess_executor_creation

    default = dg.multi_or_in_process_executor
    method = "fork" if sys.platform == "linux" else "forkserver"

    def create(init_context: dg.InitExecutorContext) -> dg.Executor:
        multiprocess = init_context.executor_config.get("multiprocess")
        if multiprocess is None or multiprocess.get("start_method"):
            return default.executor_creation_fn(init_context)
        return _core_multiprocess_executor_creation({**multiprocess, "start_method": {method: {}}})

    return dg.ExecutorDefinition(
        name=default.name,
        config_schema=default.config_schema,
        requirements=default.get_requirements,
        executor_creation_fn=create,
        description=default.description,
    )


def celery_executor_from_env() -> dg.ExecutorDefinition:
    """Broker and result backend from env vars, so the same URLs reach the run worker and the Celery workers."""
    from dagster_celery import celery_executor  # imported on demand: every process loading the code pays imports

    return celery_executor.configured(
        {
            "broker": {"env": "CELERY_BROKER_URL"},
            "backend": {"env": "CELERY_RESULT_BACKEND"},
        },
        name="celery",
    )


def k8s_executor_from_env() -> dg.ExecutorDefinition:
    """One Kubernetes Job per step (`k8s_job_executor`); needs the instance's K8sRunLauncher
    (resources/k8s/dagster.k8s.yaml), whose namespace, image, service account, labels and env the step pods take.

    The namespace is deliberately not set here: it comes from the launcher's `job_namespace`, so runs and their
    steps cannot end up in different namespaces, and importing the code needs no Kubernetes env var.
    """
    # dagster-k8s merges the run pod's settings (the launcher's `run_k8s_config`, sized for a worker that only
    # orchestrates) into every step pod, so steps set each of those keys here. CPU steps render video (ffmpeg),
    # caption and align speech; GPU steps deep-merge GPU_OP_TAGS's `dagster-k8s/config` over this (a GPU, more RAM).
    from dagster_k8s import k8s_job_executor  # ~0.2 s (the kubernetes client): only k8s deployments pay it

    step_resources = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    return k8s_job_executor.configured(
        {
            "max_concurrent": 8,  # step pods of one run at a time; the `gpu` pool still bounds GPU steps across runs
            "step_k8s_config": {"container_config": {"resources": step_resources}},
        },
        name="k8s",
    )
