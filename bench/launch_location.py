"""A code location with one job of one op that does nothing, for bench/launch.py.

It imports nothing but dagster, so a run of `noop_job` costs only Dagster's own launch machinery: the queue, the
run worker process, loading this file, the default (multiprocess) executor's step process and the event log.
"""

import dagster as dg


@dg.op
def noop() -> None:
    """Nothing: whatever the run takes is Dagster's."""


@dg.job(description="One op that does nothing (bench/launch.py).")
def noop_job() -> None:
    noop()


defs = dg.Definitions(jobs=[noop_job])
