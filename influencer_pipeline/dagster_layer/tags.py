"""Run and op tags of every GPU step and job: the GPU pool's concurrency key, celery queue and k8s GPU request."""

from __future__ import annotations

GPU_TAGS = {"gpu": "1"}  # run tag: the instance's run-tag concurrency limit counts GPU runs by it


GPU_OP_TAGS = {
    **GPU_TAGS,
    # dagster-celery: these steps go to the `gpu` queue, which only GPU boxes' workers consume.
    "dagster-celery/queue": "gpu",
    # dagster-k8s (k8s_job_executor): each of these steps runs in a pod that requests one GPU, deep-merged over the
    # executor's step defaults (k8s_executor_from_env).
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                # RAM to load SD/SDXL checkpoints, above the 8Gi step default; a GPU's request defaults to its limit.
                "requests": {"cpu": "2", "memory": "12Gi"},
                "limits": {"memory": "24Gi", "nvidia.com/gpu": "1"},
            }
        },
        # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule (GKE does it itself) so only GPU pods land there.
        "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    },
}
