"""`influencer-pipeline posts ...`: list the coming posts, and approve, hold, reschedule, publish now or mark posted.

The commands change the post ledger only (`publishing/decisions.py`, as the `review_posts` job does); the
due-posts sensor publishes what is `scheduled` and due, so "publish now" goes out on the sensor's next tick
(within a minute when `make dev` runs), never from this process. Settings are the pipeline's own: the ledger at
`POST_LEDGER_URL` (else SQLite under `WORK_DIR`) and the outbox at `OUTBOX_DIR`.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from influencer_pipeline.errors import InputError
from influencer_pipeline.personas import validate_slug
from influencer_pipeline.publishing import decisions
from influencer_pipeline.publishing.decisions import Decision, ledger_from_env, outbox_from_env, posts_between
from influencer_pipeline.publishing.review import ReviewError

Handler = Callable[[argparse.Namespace], int]
CLOCK: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731 (tests move the clock)
ACTION_HELP = {
    "approve": "approve drafts or held posts (scheduled if their time is ahead, else they wait for publish-now)",
    "hold": "keep posts from going out until they are approved again",
    "reschedule": "move posts to a new time (--at)",
    "publish-now": "approve and release posts at once, whatever their time (the only way late content goes out)",
    "mark-posted": "say you posted an outbox bundle by hand: ready_to_post becomes published",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `posts` and its subcommands to the top-level parser."""
    posts = commands.add_parser("posts", help="review the coming posts: list, approve, hold, reschedule, publish now")
    actions = posts.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the coming posts of every persona, with time, platforms and state")
    listing.add_argument("--persona", type=_persona, help="one persona only")
    listing.add_argument("--day", type=_day, help="one day (YYYY-MM-DD) instead of the next --days days")
    listing.add_argument("--days", type=int, default=14, help="how many days from today (default 14)")
    listing.add_argument("--state", help="only posts in this state (draft, held, scheduled, ready_to_post, ...)")
    listing.set_defaults(run=_guarded(_list))

    for name, help_text in ACTION_HELP.items():
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--persona", required=True, type=_persona)
        which = action.add_mutually_exclusive_group(required=True)
        which.add_argument("--post", action="append", dest="posts", metavar="POST_ID", help="a post id (repeatable)")
        which.add_argument("--day", type=_day, help="every post of this day (YYYY-MM-DD)")
        action.add_argument("--platform", default="", help="one platform only (default: every platform of the post)")
        if name == "reschedule":
            action.add_argument("--at", required=True, help="the new time with its offset: 2026-12-07T18:30:00+01:00")
        if name == "mark-posted":
            action.add_argument("--url", default="", help="the post's address on the platform, kept with the bundle")
        action.add_argument("--reviewer", default=f"cli:{getpass.getuser()}", help="who decided (kept in the ledger)")
        action.set_defaults(run=_guarded(_decide), decision=name.replace("-", "_"))


def _persona(value: str) -> str:
    try:
        return validate_slug(value, where="--persona")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _day(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day; write it as YYYY-MM-DD") from None


def _guarded(handler: Handler) -> Handler:
    """Turn the errors a person can act on into one line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (InputError, ReviewError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _list(args: argparse.Namespace) -> int:
    today = CLOCK().date()
    first, last = (
        (args.day, args.day) if args.day else (today.isoformat(), (today + timedelta(days=args.days - 1)).isoformat())
    )
    statuses = posts_between(ledger_from_env(), first, last, args.persona)
    if args.state:
        statuses = [s for s in statuses if s.state == args.state]
    if not statuses:
        print(f"no planned posts from {first} to {last}: plan days ahead with the content calendar, then look again")
        return 0
    print(f"{'time (UTC)':17}  {'persona':12} {'post':18} {'platform':10} {'state':14} note")
    for s in statuses:
        note = s.last_error or (s.permalink if s.state in ("published", "ready_to_post") else "")
        row = f"{s.publish_at:%Y-%m-%d %H:%M}  {s.persona:12} {s.post_id:18} {s.platform:10} {s.state:14} {note}"
        print(row.rstrip())
    return 0


def _decide(args: argparse.Namespace) -> int:
    ledger = ledger_from_env()
    publish_at = decisions.parse_time(args.at, "--at") if args.decision == "reschedule" else None
    post_ids = args.posts or sorted({s.post_id for s in posts_between(ledger, args.day, args.day, args.persona)})
    if not post_ids:
        raise ReviewError(f"{args.persona} has no planned post on {args.day}; `posts list` shows what is planned")
    wanted = [
        Decision(args.persona, post_id, args.decision, args.platform, publish_at, getattr(args, "url", ""))
        for post_id in post_ids
    ]
    outbox = outbox_from_env() if args.decision == "mark_posted" else None
    outcomes = decisions.apply(ledger, wanted, reviewer=args.reviewer, now=CLOCK(), outbox=outbox)
    print(decisions.summary(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1
