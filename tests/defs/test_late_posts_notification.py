"""The run-failure notification carries the late-posts line of a failed posts_on_time check.

A blocking check's own error only names the check ("1 blocking asset check failed ... posts_on_time"); the
notification adds the check's description, which names each post, platform, state and last error.
"""

from __future__ import annotations

import dagster as dg

from influencer_pipeline.defs.operations.sensors import failure_of

LINE = "1 post(s) not published: ava 2026-12-01-1 on instagram: failed (due 2026-12-01 09:30 UTC): media refused"


@dg.asset(check_specs=[dg.AssetCheckSpec("posts_on_time", asset="published_posts", blocking=True)])
def published_posts() -> dg.MaterializeResult:
    check = dg.AssetCheckResult(check_name="posts_on_time", passed=False, description=LINE)
    return dg.MaterializeResult(check_results=[check])


def test_a_failed_check_puts_its_description_in_the_failure_message() -> None:
    with dg.instance_for_test() as instance:
        result = dg.materialize([published_posts], instance=instance, raise_on_error=False)
        assert not result.success
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_notifier",
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=result.get_run_failure_event(),
        ).for_run_failure()
        failure = failure_of(context)
    assert failure.step == "published_posts"
    assert f"published_posts.posts_on_time: {LINE}" in failure.message.splitlines()
