"""The Kubernetes deployment config, checked offline against dagster's and dagster-k8s's own schemas and code.

There is no cluster here. What is checked:
- resources/k8s/dagster.k8s.yaml passes dagster's instance schema, and each pluggable section (run coordinator,
  K8sRunLauncher, S3 compute logs, PostgreSQL storage) passes its class's config schema the way DagsterInstance
  loads it; the K8sRunLauncher is then really constructed (with a kubeconfig file instead of in-cluster credentials;
  constructing it calls no API).
- With DAGSTER_EXECUTOR=k8s, every job of the real code location resolves its executor config against
  k8s_job_executor's schema and creates its k8s executor.
- The Job manifests are built by dagster-k8s's own code (K8sRunLauncher.launch_run for the run pod,
  K8sStepHandler.launch_step for each step pod, which merges launcher, executor and op-tag config) against a
  Kubernetes API stand-in that records `create_namespaced_job` instead of sending it: every step in pool "gpu"
  gets an `nvidia.com/gpu` limit of 1 and a toleration for GPU-node taints, and no other step or run pod asks for a GPU.
Not checked: that a cluster accepts these Jobs, schedules them, or that the image runs.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import dagster_k8s.client
import kubernetes
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import create_context_free_log_manager
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating import StepDelegatingExecutor
from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import LaunchRunContext
from dagster._core.system_config.objects import ResolvedRunConfig
from dagster._core.test_utils import create_run_for_test
from dagster._grpc.types import ExecuteStepArgs
from dagster._serdes import ConfigurableClassData
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.client import DagsterKubernetesClient
from dagster_k8s.executor import K8sStepHandler
from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY, get_user_defined_k8s_config
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import pg_url_from_config

from tests.support.jobs import run_config_for

ROOT = Path(__file__).resolve().parents[2]
K8S_YAML = ROOT / "resources" / "k8s" / "dagster.k8s.yaml"
PRODUCTION_YAML = ROOT / "resources" / "dagster" / "dagster.production.yaml"
CONFIGURABLE_SECTIONS = ("run_coordinator", "run_launcher", "compute_logs")
GPU = "nvidia.com/gpu"
ENV = {  # what the ConfigMap and Secrets give every pod (values are this test's)
    "DAGSTER_PG_HOST": "postgres.influencer.svc",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "pg-secret",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_K8S_NAMESPACE": "influencer-test",
    "DAGSTER_K8S_JOB_IMAGE": "registry.example/influencer-pipeline:0123abc",
    "DAGSTER_COMPUTE_LOG_BUCKET": "dagster-logs",
    "S3_ENDPOINT_URL": "http://minio.influencer.svc:9000",
    "AWS_REGION": "us-east-1",
}
KUBECONFIG = {  # a cluster nobody calls: K8sRunLauncher and K8sStepHandler only load it
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "users": [{"name": "offline", "user": {"token": "not-a-token"}}],
    "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
    "current-context": "offline",
}


# ---- fixtures and helpers -------------------------------------------------------------------------------------------


class RecordingBatchApi:
    """kubernetes.client.BatchV1Api stand-in: keeps the Jobs dagster-k8s creates."""

    def __init__(self) -> None:
        self.created: list[tuple[str, kubernetes.client.V1Job]] = []

    def create_namespaced_job(self, body: kubernetes.client.V1Job, namespace: str, **_: Any) -> None:
        self.created.append((namespace, body))


def recording_client(batch: RecordingBatchApi) -> DagsterKubernetesClient:
    return DagsterKubernetesClient.production_client(batch_api_override=batch, core_api_override=object())


@pytest.fixture
def k8s_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_EXECUTOR", "k8s")
    return ENV


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[str]:
    """A kubeconfig file; the kubernetes client's process-wide default configuration is restored afterwards."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(KUBECONFIG))
    saved = kubernetes.client.Configuration.get_default_copy()
    yield str(path)
    kubernetes.client.Configuration.set_default(saved)


def k8s_yaml() -> dict[str, Any]:
    return yaml.safe_load(K8S_YAML.read_text())


def offline(config: dict[str, Any], kubeconfig: str) -> dict[str, Any]:
    """The instance yaml with the launcher reading a kubeconfig file instead of the pod's service account."""
    config = copy.deepcopy(config)
    config["run_launcher"]["config"].update(load_incluster_config=False, kubeconfig_file=kubeconfig)
    return config


def load_instance_yaml(config: dict[str, Any], directory: Path) -> dict[str, Any]:
    """What DagsterInstance does with a dagster.yaml, short of connecting to PostgreSQL: the instance schema for the
    whole file, then each pluggable class's own schema (env vars resolved, defaults applied) and its constructor.
    Returns the constructed objects by section (storage: its URL); raises DagsterInvalidConfigError on a schema
    error."""
    (directory / "dagster.yaml").write_text(yaml.safe_dump(config))
    validated, _ = dagster_instance_config(str(directory))
    loaded: dict[str, Any] = {}
    for section in CONFIGURABLE_SECTIONS:
        entry = validated[section]
        data = ConfigurableClassData(entry["module"], entry["class"], yaml.safe_dump(entry.get("config") or {}))
        loaded[section] = data.rehydrate()
    storage = process_config(
        resolve_to_config_type(DagsterPostgresStorage.config_type()), config["storage"]["postgres"]
    )
    if not storage.success:
        raise DagsterInvalidConfigError("storage.postgres", storage.errors, config["storage"]["postgres"])
    loaded["storage"] = pg_url_from_config(storage.value)
    return loaded


@pytest.fixture
def instance(k8s_env: dict[str, str], kubeconfig: str) -> Iterator[dg.DagsterInstance]:
    """A test instance (SQLite in a temp dir: no PostgreSQL needed) with every other section of the k8s yaml."""
    overrides = {key: value for key, value in offline(k8s_yaml(), kubeconfig).items() if key != "storage"}
    with dg.instance_for_test(overrides=overrides) as inst:
        yield inst


@pytest.fixture
def k8s_defs(k8s_env: dict[str, str]) -> dg.Definitions:
    """The real code location, built as a pod with DAGSTER_EXECUTOR=k8s builds it."""
    from influencer_pipeline.definitions import build_definitions

    return build_definitions()


def all_jobs(defs: dg.Definitions) -> list[dg.JobDefinition]:
    return list(defs.get_repository_def().get_all_jobs())


def create_executor(job: dg.JobDefinition, instance: dg.DagsterInstance) -> StepDelegatingExecutor:
    """As a run worker does: the job's executor config resolved against its schema, then the executor created."""
    resolved = ResolvedRunConfig.build(job, run_config_for(job))
    executor = job.executor_def.executor_creation_fn(
        InitExecutorContext(
            job=InMemoryJob(job),
            executor_def=job.executor_def,
            executor_config=resolved.execution.execution_engine_config,
            instance=instance,
        )
    )
    assert isinstance(executor, StepDelegatingExecutor)
    return executor


def job_origin(job_name: str):
    """The origin a run of the code location carries (its module and attribute, as workspace.yaml loads it)."""
    repo = ReconstructableRepository.for_module("influencer_pipeline.definitions", "defs", str(ROOT))
    return repo.get_reconstructable_job(job_name).get_python_origin()


def step_manifests(job: dg.JobDefinition, instance: dg.DagsterInstance) -> dict[str, tuple[str, Any]]:
    """Each step's (namespace, V1Job), as the job's k8s executor would submit them in one run."""
    executor = create_executor(job, instance)
    handler = executor._step_handler  # private: the handler the executor built
    assert isinstance(handler, K8sStepHandler)
    api = RecordingBatchApi()
    handler._api_client = recording_client(api)
    origin = job_origin(job.name)
    run = create_run_for_test(instance, job_name=job.name, job_code_origin=origin)
    plan: ExecutionPlan = create_execution_plan(job, run_config=run_config_for(job))
    plan_context = PlanOrchestrationContext(
        plan_data=PlanData(
            job=InMemoryJob(job),
            dagster_run=run,
            instance=instance,
            execution_plan=plan,
            raise_on_error=True,
            retry_mode=RetryMode.DISABLED,
        ),
        log_manager=create_context_free_log_manager(instance, run),
        executor=executor,
        output_capture=None,
    )
    manifests = {}
    for step in plan.steps:
        args = ExecuteStepArgs(
            job_origin=origin,
            run_id=run.run_id,
            step_keys_to_execute=[step.key],
            instance_ref=instance.get_ref(),
            retry_mode=RetryMode.DISABLED,
            should_verify_step=True,
            print_serialized_events=False,
        )
        context = StepHandlerContext(instance, plan_context, [step], args, run)
        list(handler.launch_step(context))
        manifests[step.key] = api.created[-1]
    assert len(api.created) == len(plan.steps)
    return manifests


def container(job: kubernetes.client.V1Job) -> kubernetes.client.V1Container:
    [only] = job.spec.template.spec.containers
    return only


def resources(job: kubernetes.client.V1Job) -> dict[str, dict[str, str]]:
    found = container(job).resources
    return {"limits": dict(found.limits or {}), "requests": dict(found.requests or {})}


def tolerations(job: kubernetes.client.V1Job) -> list[tuple[str, str, str]]:
    return [(t.key, t.operator, t.effect) for t in job.spec.template.spec.tolerations or []]


def gpu_step_keys(job: dg.JobDefinition) -> set[str]:
    return {step.key for step in create_execution_plan(job, run_config=run_config_for(job)).steps if step.pool == "gpu"}


# ---- (a) the instance yaml -------------------------------------------------------------------------------------------


def test_k8s_instance_yaml_loads_through_dagster_and_dagster_k8s_schemas(
    k8s_env: dict[str, str], kubeconfig: str, tmp_path: Path
) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    loaded = load_instance_yaml(offline(k8s_yaml(), kubeconfig), tmp_path)
    assert isinstance(loaded["run_coordinator"], QueuedRunCoordinator)
    assert isinstance(loaded["compute_logs"], S3ComputeLogManager)
    env = k8s_env
    pg = f"postgresql+psycopg2://{env['DAGSTER_PG_USERNAME']}:{env['DAGSTER_PG_PASSWORD']}@{env['DAGSTER_PG_HOST']}"
    assert loaded["storage"] == f"{pg}:{env['DAGSTER_PG_PORT']}/{env['DAGSTER_PG_DB']}"

    launcher = loaded["run_launcher"]
    assert isinstance(launcher, K8sRunLauncher)
    assert launcher.job_namespace == env["DAGSTER_K8S_NAMESPACE"]
    assert launcher.job_image == env["DAGSTER_K8S_JOB_IMAGE"]
    assert launcher.image_pull_policy == "IfNotPresent"
    assert launcher.service_account_name == "dagster"
    assert launcher.postgres_password_secret == "dagster-postgresql-secret"
    assert launcher.env_config_maps == ["influencer-pipeline-env"]
    assert launcher.env_secrets == ["influencer-pipeline-secrets"]
    assert "DAGSTER_EXECUTOR=k8s" in launcher.env_vars
    assert launcher.fail_pod_on_run_failure is True
    # The yaml as shipped loads credentials in-cluster; only this test swaps in the kubeconfig.
    assert k8s_yaml()["run_launcher"]["config"]["load_incluster_config"] is True
    assert launcher.load_incluster_config is False and launcher.kubeconfig_file == kubeconfig


def test_launcher_config_matches_k8s_run_launcher_config_type(k8s_env: dict[str, str]) -> None:
    """The launcher section on its own, against K8sRunLauncher.config_type() (env vars resolved)."""
    config = k8s_yaml()["run_launcher"]["config"]
    result = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), config)
    assert result.success, result.errors
    assert result.value["job_namespace"] == k8s_env["DAGSTER_K8S_NAMESPACE"]
    assert result.value["run_k8s_config"]["container_config"]["resources"]["limits"]["memory"]


@pytest.mark.parametrize(
    ("section", "bad_key"),
    [
        ("run_launcher", "job_namspace"),  # a misspelled K8sRunLauncher field
        ("run_launcher", "run_k8s_config.container_conifg"),  # a misspelled raw k8s config section
        ("compute_logs", "buckett"),
        ("run_coordinator", "dequeue_interval"),
        (None, "run_monitorng"),  # a misspelled top-level section
    ],
)
def test_a_misspelled_key_is_rejected_by_the_same_loading_path(
    k8s_env: dict[str, str], kubeconfig: str, tmp_path: Path, section: str | None, bad_key: str
) -> None:
    config = offline(k8s_yaml(), kubeconfig)
    node = config if section is None else config[section]["config"]
    *parents, leaf = bad_key.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = {"enabled": True} if section is None else "x"
    with pytest.raises(DagsterInvalidConfigError):
        load_instance_yaml(config, tmp_path)


def test_a_missing_env_var_is_rejected(k8s_env: dict[str, str], kubeconfig: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DAGSTER_K8S_NAMESPACE")
    with pytest.raises(DagsterInvalidConfigError):
        load_instance_yaml(offline(k8s_yaml(), kubeconfig), tmp_path)


def test_k8s_instance_keeps_the_production_instance_settings() -> None:
    """Only the launcher and run monitoring differ from the single-box production instance, on purpose."""
    k8s, production = k8s_yaml(), yaml.safe_load(PRODUCTION_YAML.read_text())
    differ = {"run_launcher", "run_monitoring"}
    assert set(k8s) == set(production)
    assert {key: k8s[key] for key in set(k8s) - differ} == {key: production[key] for key in set(k8s) - differ}
    monitoring, single_box = k8s["run_monitoring"], production["run_monitoring"]
    assert monitoring["enabled"] and monitoring["max_runtime_seconds"] == single_box["max_runtime_seconds"]
    assert monitoring["max_resume_run_attempts"] > 0  # K8sRunLauncher, unlike DefaultRunLauncher, can resume


def test_instance_built_from_the_k8s_yaml(instance: dg.DagsterInstance) -> None:
    assert isinstance(instance.run_launcher, K8sRunLauncher)
    assert instance.run_launcher.supports_resume_run and instance.run_launcher.supports_check_run_worker_health
    assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 2
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
    assert type(instance.run_coordinator).__name__ == "CheckedRunCoordinator"  # the queue, checking config ranges


def test_run_pod_manifest(instance: dg.DagsterInstance, k8s_defs: dg.Definitions) -> None:
    """The run worker's Job, built by K8sRunLauncher.launch_run: small, no GPU, the k8s executor switched on."""
    launcher = instance.run_launcher
    assert isinstance(launcher, K8sRunLauncher)
    api = RecordingBatchApi()
    launcher._api_client = recording_client(api)  # it builds its API client itself
    run = create_run_for_test(instance, job_name="persona_training", job_code_origin=job_origin("persona_training"))
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

    [(namespace, job)] = api.created
    assert namespace == ENV["DAGSTER_K8S_NAMESPACE"]
    pod = job.spec.template.spec
    assert pod.service_account_name == "dagster" and pod.restart_policy == "Never"
    assert job.spec.backoff_limit == 0
    run_pod = container(job)
    assert run_pod.image == ENV["DAGSTER_K8S_JOB_IMAGE"] and run_pod.image_pull_policy == "IfNotPresent"
    assert run_pod.args[:3] == ["dagster", "api", "execute_run"]
    expected = k8s_yaml()["run_launcher"]["config"]["run_k8s_config"]["container_config"]["resources"]
    assert resources(job) == expected
    assert GPU not in json.dumps(job.to_dict())

    env = {e.name: e for e in run_pod.env}
    assert env["DAGSTER_EXECUTOR"].value == "k8s"
    assert env["DAGSTER_HOME"].value == "/opt/dagster/dagster_home"
    secret_ref = env["DAGSTER_PG_PASSWORD"].value_from.secret_key_ref
    assert (secret_ref.name, secret_ref.key) == ("dagster-postgresql-secret", "postgresql-password")
    env_from = [(s.config_map_ref or s.secret_ref).name for s in run_pod.env_from]
    assert env_from == ["influencer-pipeline-env", "influencer-pipeline-secrets"]
    assert job.metadata.labels["app.kubernetes.io/part-of"] == "influencer-pipeline"


# ---- (b) the executor of the code location ---------------------------------------------------------------------------


def test_every_job_resolves_the_k8s_executor_config(k8s_defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    jobs = all_jobs(k8s_defs)
    assert jobs
    for job in jobs:
        assert job.executor_def.name == "k8s", job.name
        config = ResolvedRunConfig.build(job, run_config_for(job)).execution.execution_engine_config
        # The resolved config passes k8s_job_executor's own schema once more, as raw config.
        again = process_config(resolve_to_config_type(k8s_job_executor.config_schema.config_type), config)
        assert again.success, (job.name, again.errors)
        executor = create_executor(job, instance)
        assert isinstance(executor._step_handler, K8sStepHandler)
        assert create_execution_plan(job, run_config=run_config_for(job)).steps


def test_a_misspelled_executor_key_is_rejected_by_the_same_path() -> None:
    bad = k8s_job_executor.configured({"step_k8s_config": {"container_conifg": {}}}, name="k8s")

    @dg.op
    def noop() -> None:
        pass

    @dg.job(executor_def=bad)
    def probe() -> None:
        noop()

    with pytest.raises(DagsterInvalidConfigError):
        ResolvedRunConfig.build(probe, {})


# ---- (c) GPU steps ---------------------------------------------------------------------------------------------------


def test_gpu_op_tags_parse_with_dagster_k8s_parser(k8s_defs: dg.Definitions) -> None:
    gpu_steps = 0
    for job in all_jobs(k8s_defs):
        for step in create_execution_plan(job, run_config=run_config_for(job)).steps:
            parsed = get_user_defined_k8s_config(step.tags)
            limits = parsed.container_config.get("resources", {}).get("limits", {})
            if step.pool == "gpu":
                gpu_steps += 1
                assert limits.get(GPU) == "1", (job.name, step.key)
            else:
                assert GPU not in json.dumps(parsed.to_dict()), (job.name, step.key)
    assert gpu_steps >= 3  # lora_weights, lora_samples, post_images (in each job that has them)


def test_a_misspelled_k8s_tag_is_rejected_by_the_parser() -> None:
    from influencer_pipeline.dagster_layer.tags import GPU_OP_TAGS

    good = {key: json.dumps(value) if isinstance(value, dict) else value for key, value in GPU_OP_TAGS.items()}
    assert get_user_defined_k8s_config(good).container_config["resources"]["limits"][GPU] == "1"
    value = json.loads(good[USER_DEFINED_K8S_CONFIG_KEY])
    value["container_conifg"] = value.pop("container_config")
    with pytest.raises(DagsterInvalidConfigError):
        get_user_defined_k8s_config({**good, USER_DEFINED_K8S_CONFIG_KEY: json.dumps(value)})


def test_step_pod_manifests_request_a_gpu_only_for_gpu_steps(
    k8s_defs: dg.Definitions, instance: dg.DagsterInstance
) -> None:
    from influencer_pipeline.dagster_layer.tags import GPU_OP_TAGS

    gpu_tag = GPU_OP_TAGS[USER_DEFINED_K8S_CONFIG_KEY]["container_config"]["resources"]
    seen_gpu = set()
    for job in all_jobs(k8s_defs):
        step_defaults = ResolvedRunConfig.build(job, run_config_for(job)).execution.execution_engine_config.get(
            "step_k8s_config", {}
        )
        default_resources = step_defaults.get("container_config", {}).get("resources")
        assert default_resources, "k8s_executor_from_env sets no step resources: steps would get the run pod's"
        gpu_keys = gpu_step_keys(job)
        for step_key, (namespace, manifest) in step_manifests(job, instance).items():
            where = (job.name, step_key)
            assert namespace == ENV["DAGSTER_K8S_NAMESPACE"], where  # the launcher's: the executor sets none
            pod = container(manifest)
            assert pod.image == ENV["DAGSTER_K8S_JOB_IMAGE"], where
            assert pod.args[:3] == ["dagster", "api", "execute_step"], where
            assert manifest.spec.template.spec.service_account_name == "dagster", where
            assert manifest.metadata.labels["dagster/op"] == step_key, where
            assert {e.name: e.value for e in pod.env}["DAGSTER_EXECUTOR"] == "k8s", where
            found = resources(manifest)
            if step_key in gpu_keys:
                seen_gpu.add(step_key)
                assert found["limits"][GPU] == "1", where
                # The op tag wins over the executor's step defaults key by key (deep merge), and over the run pod.
                assert found["limits"]["memory"] == gpu_tag["limits"]["memory"], where
                assert found["requests"] == gpu_tag["requests"], where
                assert (GPU, "Exists", "NoSchedule") in tolerations(manifest), where
            else:
                assert found == default_resources, where  # the executor's step defaults, not the run pod's
                assert not tolerations(manifest) and GPU not in json.dumps(manifest.to_dict()), where
    assert seen_gpu == {"lora_weights", "lora_samples", "post_images"}


# ---- RBAC ------------------------------------------------------------------------------------------------------------

RBAC_YAML = ROOT / "resources" / "k8s" / "rbac.yaml"
RBAC_MODELS = {"ServiceAccount": "V1ServiceAccount", "Role": "V1Role", "RoleBinding": "V1RoleBinding"}
API_GROUPS = {"batch_api": "batch", "core_api": ""}
API_VERBS = {"create": "create", "delete": "delete", "list": "list", "read": "get", "patch": "patch"}
API_RESOURCES = {"job": "jobs", "job_status": "jobs/status", "pod": "pods", "pod_log": "pods/log", "event": "events"}


def unknown_fields(model: str, data: Any, path: str = "") -> list[str]:
    """Keys in a manifest that the kubernetes client's model of that object does not have (typos, wrong nesting)."""
    if model.startswith("list["):
        return [bad for i, item in enumerate(data) for bad in unknown_fields(model[5:-1], item, f"{path}[{i}]")]
    cls = getattr(kubernetes.client, model, None)
    if cls is None:  # str, dict(str, str), ...
        return []
    json_to_attr = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    bad = [f"{path}.{key}" for key in data if key not in json_to_attr]
    return bad + [
        found
        for key, value in data.items()
        if key in json_to_attr
        for found in unknown_fields(cls.openapi_types[json_to_attr[key]], value, f"{path}.{key}")
    ]


def rbac_docs() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(RBAC_YAML.read_text()) if doc]


def required_permissions() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every Kubernetes API call in the installed dagster-k8s client."""
    source = inspect.getsource(dagster_k8s.client)
    calls = set(re.findall(r"self\.(batch_api|core_api)\.(\w+)\(", source))
    assert calls, "found no API calls in dagster_k8s.client: the pattern is out of date"
    needed = set()
    for api, method in calls:
        verb, _, resource = method.partition("_namespaced_")
        assert verb in API_VERBS and resource in API_RESOURCES, f"unmapped dagster-k8s API call {api}.{method}"
        needed.add((API_GROUPS[api], API_RESOURCES[resource], API_VERBS[verb]))
    return needed


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_manifests_use_only_fields_of_their_kubernetes_kinds() -> None:
    docs = rbac_docs()
    assert sorted(doc["kind"] for doc in docs) == sorted(RBAC_MODELS)
    for doc in docs:
        assert unknown_fields(RBAC_MODELS[doc["kind"]], doc) == [], doc["kind"]
    assert unknown_fields("V1Role", {"rules": [{"verbz": ["get"]}]}) == [".rules[0].verbz"]  # the check can fail


def test_rbac_binds_the_launchers_service_account_to_exactly_what_dagster_k8s_calls() -> None:
    docs = {doc["kind"]: doc for doc in rbac_docs()}
    account = k8s_yaml()["run_launcher"]["config"]["service_account_name"]
    assert docs["ServiceAccount"]["metadata"]["name"] == account
    binding = docs["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dagster"}
    assert docs["Role"]["metadata"]["name"] == binding["roleRef"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    needed = required_permissions()
    assert ("batch", "jobs", "create") in needed and ("", "pods/log", "get") in needed
    assert granted(docs["Role"]) == needed
