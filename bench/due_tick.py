"""Benchmark: one `due_posts_sensor` tick with a month of history for 200 personas against 1 persona.

    python bench/due_tick.py [--personas 200] [--days 30] [--ticks 30]

Both ledgers hold `--days` days of plans (3 posts a day on two platforms, every earlier day published, every later
day scheduled) and the same due work now: 3 posts of one persona. A tick reads only what is due (scheduled rows
whose time has come, joined to their attempts) and the post_videos materializations since its cursor, so its cost
should follow the due work, not the history: the goal is a ratio near 1 (at most GOAL). A third line shows the
tick with every persona's post due at once, where the cost should grow. Each setup keeps its median tick over
`--ticks` ticks (a shared 2-core box makes single ticks noisy); the first tick (migration, engine) is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make the package importable

from influencer_pipeline.dagster_layer import publishing as defs  # noqa: E402
from influencer_pipeline.dagster_layer.publishing import PublishingResource  # noqa: E402
from influencer_pipeline.dagster_layer.resources import LocalMediaStoreResource  # noqa: E402
from influencer_pipeline.defs.publishing.sensors import due_posts_sensor  # noqa: E402
from influencer_pipeline.publishing.ledger import ATTEMPTS, PLANNED, Ledger, default_url  # noqa: E402

GOAL = 2.0
NOW = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
PLATFORMS = ("instagram", "facebook")
TIMES = (9, 12, 18)


def fill(ledger: Ledger, personas: int, days: int, due_personas: int) -> None:
    """A month of plans in one transaction: earlier days published, the rest scheduled (due only for
    `due_personas` personas today, in the morning; the others' today posts are in the evening)."""
    planned, attempts = [], []
    first = NOW.date() - timedelta(days=days - 1)
    for p in range(personas):
        persona = f"persona-{p:03d}"
        for d in range(days):
            day = first + timedelta(days=d)
            for n, hour in enumerate(TIMES):
                if day == NOW.date() and p >= due_personas:
                    hour = 23  # not due yet
                at = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
                past = day < NOW.date()
                for platform in PLATFORMS:
                    post_id = f"{day.isoformat()}-{n + 1}"
                    account = f"acct-{persona}-{platform}"
                    row = {
                        "persona": persona,
                        "day": day.isoformat(),
                        "post_id": post_id,
                        "platform": platform,
                        "status": "published" if past else "scheduled",
                        "publish_at": at,
                        "planned_at": at,
                        "rescheduled": False,
                        "approved_at": at - timedelta(days=1),
                        "reviewer": "policy:auto",
                        "content_version": "bench",
                        "created_at": at - timedelta(days=1),
                        "updated_at": at,
                        "attempt_id": None,
                    }
                    if past:
                        row["attempt_id"] = len(attempts) + 1
                        attempts.append(
                            {
                                "id": len(attempts) + 1,
                                "post_id": post_id,
                                "account_id": account,
                                "platform": platform,
                                "state": "published",
                                "fingerprint": f"{persona}{post_id}{platform}",
                                "handle_failures": 0,
                                "handle_committed": True,
                                "remote_id": f"r-{len(attempts)}",
                                "attempts": 1,
                                "commit_count": 1,
                                "created_at": at,
                                "updated_at": at,
                                "published_at": at,
                            }
                        )
                    planned.append(row)
    with ledger.engine.begin() as connection:
        if attempts:
            connection.execute(insert(ATTEMPTS), attempts)
        connection.execute(insert(PLANNED), planned)


def measure(personas: int, days: int, due_personas: int, ticks: int) -> tuple[float, int]:
    """Median seconds per tick and the number of run requests of the last tick."""
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        work = Path(tmp) / "work"
        ledger = Ledger(default_url(work))
        ledger.upgrade()
        fill(ledger, personas, days, due_personas)
        ledger.dispose()
        instance.add_dynamic_partitions("personas", [f"persona-{p:03d}" for p in range(personas)])
        resources = {
            "media": LocalMediaStoreResource(root=str(Path(tmp) / "media")),
            "publishing": PublishingResource(work_dir=str(work), outbox_dir=str(Path(tmp) / "outbox")),
        }
        times, requests = [], 0
        for i in range(ticks + 1):
            started = time.perf_counter()
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                result = due_posts_sensor(context)
            if i:
                times.append(time.perf_counter() - started)
            requests = len(result.run_requests or [])
        return statistics.median(times), requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--ticks", type=int, default=30)
    args = parser.parse_args()
    defs.CLOCK = lambda: NOW  # the plans are laid out around NOW
    one, one_runs = measure(1, args.days, 1, args.ticks)
    many, many_runs = measure(args.personas, args.days, 1, args.ticks)
    busy, busy_runs = measure(args.personas, args.days, args.personas, args.ticks)
    history = args.personas * args.days * len(TIMES) * len(PLATFORMS)
    print(f"due_posts_sensor tick, {args.days} days of plans, 3 posts x {len(PLATFORMS)} platforms a day:")
    print(f"  1 persona, 1 persona due:                {one * 1000:8.1f} ms  ({one_runs} run request)")
    print(
        f"  {args.personas} personas ({history} rows), 1 persona due: {many * 1000:8.1f} ms  ({many_runs} run request)"
    )
    label = f"{args.personas} personas, all {args.personas} due:"
    print(f"  {label:41s} {busy * 1000:8.1f} ms  ({busy_runs} run requests)")
    ratio = many / one
    print(f"history ratio ({args.personas} personas / 1, same due work): {ratio:.2f} (goal: <= {GOAL})")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
