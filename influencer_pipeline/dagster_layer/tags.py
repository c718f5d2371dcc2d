"""Run and op tags of every GPU step and job: the GPU pool's concurrency key, celery queue and k8s GPU request."""

from __future__ import annotations

from typing import Any

import dagster as dg

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


def gpu_step(retry_delay_s: int = 10) -> dict[str, Any]:
    """What makes an asset a GPU step, said once: the `gpu` pool (one step per GPU slot across runs), the op tags
    above, and retries for crashes such as a CUDA out-of-memory or a lost ComfyUI, backing off exponentially.
    User errors are raised as final failures (`dagster_layer/errors.py`) and never use these retries.

        @dg.asset(..., **gpu_step())
    """
    return {
        "pool": "gpu",
        "op_tags": GPU_OP_TAGS,
        "retry_policy": dg.RetryPolicy(max_retries=2, delay=retry_delay_s, backoff=dg.Backoff.EXPONENTIAL),
    }
