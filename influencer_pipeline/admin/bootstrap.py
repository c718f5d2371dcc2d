"""Set the `gpu` pool limit on the Dagster instance: `python -m influencer_pipeline.admin.bootstrap --gpu-slots 3`.

Per-pool limits cannot be written in dagster.yaml: they live in the instance database (event-log storage), so a
fresh PostgreSQL needs this once, and running it again must be harmless. It is idempotent: it only writes when the
stored limit differs (or is merely the yaml's `default_limit`), and prints what it did either way.

It also cross-checks the yaml's run-tag limit for GPU runs (tag `gpu=1`, `GPU_TAGS`): that limit should equal the
number of GPU slots, otherwise GPU runs either wait for no reason or start workers that sit on a GPU for a slot.
Exit status: 0 done (warnings included), 2 this instance cannot hold pool limits (e.g. in-memory storage).
"""

from __future__ import annotations

import argparse
import sys

import dagster as dg

from influencer_pipeline.dagster_layer.tags import GPU_TAGS

GPU_POOL = "gpu"


def set_pool_limit(instance: dg.DagsterInstance, pool: str, slots: int) -> str:
    """Make `pool`'s explicit limit `slots`; return a sentence saying whether anything changed."""
    storage = instance.event_log_storage
    info = storage.get_concurrency_info(pool)
    explicit = pool in storage.get_concurrency_keys() and not info.using_default_limit
    if explicit and info.limit == slots:
        return f"pool '{pool}': already {slots} slot(s); nothing changed."
    storage.set_concurrency_slots(pool, slots)
    was = "unset" if info.limit is None else f"{info.limit}{'' if explicit else ' from default_limit'}"
    return f"pool '{pool}': limit set to {slots} slot(s) (was {was})."


def gpu_run_limit_warning(instance: dg.DagsterInstance, slots: int) -> str | None:
    """A warning when dagster.yaml's run-tag limit for GPU runs disagrees with the pool, else None."""
    (key, value), *_ = GPU_TAGS.items()
    queue = instance.get_concurrency_config().run_queue_config
    limits = [
        entry["limit"]
        for entry in (queue.tag_concurrency_limits if queue else [])
        if entry.get("key") == key and entry.get("value") == value
    ]
    where = "concurrency.runs.tag_concurrency_limits in dagster.yaml"
    if not limits:
        return f"warning: {where} has no limit for runs tagged {key}={value}; add one with limit: {slots}."
    if min(limits) != slots:
        return (
            f"warning: {where} lets {min(limits)} run(s) tagged {key}={value} run at once, but the pool has "
            f"{slots} slot(s); set that limit to {slots}."
        )
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-slots", type=int, default=1, help="GPU steps allowed at once (default 1)")
    args = parser.parse_args()
    if args.gpu_slots < 0:
        parser.error("--gpu-slots must be 0 (pause GPU work) or more")

    with dg.DagsterInstance.get() as instance:
        if not instance.event_log_storage.supports_global_concurrency_limits:
            print(
                "error: this instance's storage cannot hold pool limits; point DAGSTER_HOME at the production "
                "dagster.yaml (PostgreSQL) or a SQLite instance.",
                file=sys.stderr,
            )
            return 2
        print(set_pool_limit(instance, GPU_POOL, args.gpu_slots))
        warning = gpu_run_limit_warning(instance, args.gpu_slots)
    if warning:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
