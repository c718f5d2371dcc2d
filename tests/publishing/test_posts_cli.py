"""`influencer-pipeline posts ...` (issue 13, item 2): list, approve, hold, reschedule, publish now, mark posted.

The command is run as a person runs it (`main([...])`, the console script's entry point) against the ledger the
pipeline uses (`POST_LEDGER_URL`), on a fixed clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from influencer_pipeline import cli
from influencer_pipeline.publishing import cli as posts_cli
from influencer_pipeline.publishing import review
from influencer_pipeline.publishing.decisions import ledger_from_env
from influencer_pipeline.publishing.due import day_statuses, due_posts
from influencer_pipeline.publishing.review import PlanEntry, PostKey

NOW = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
TOMORROW = "2026-12-07"
AT_9 = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
AT_18 = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)


@pytest.fixture
def planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("POST_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setattr(posts_cli, "CLOCK", lambda: NOW)
    ledger = ledger_from_env()
    entries = [
        PlanEntry(f"{TOMORROW}-1", "instagram", AT_9),
        PlanEntry(f"{TOMORROW}-1", "facebook", AT_9),
        PlanEntry(f"{TOMORROW}-2", "tiktok", AT_18),
    ]
    review.register_day(ledger, "ava", TOMORROW, entries, approval="required", content_version="v1", now=NOW)
    review.register_day(ledger, "bob", TOMORROW, [PlanEntry(f"{TOMORROW}-1", "youtube", AT_18)],
                        approval="required", content_version="v1", now=NOW)  # fmt: skip
    return ledger


def states(ledger, persona: str = "ava") -> dict[tuple[str, str], str]:
    return {(s.post_id, s.platform): s.state for s in day_statuses(ledger, persona, TOMORROW)}


def test_list_shows_every_persona_upcoming_posts_with_time_and_state(planned, capsys) -> None:
    assert cli.main(["posts", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5  # the header and four (post, platform) rows, tomorrow's included
    assert "2026-12-07 09:30" in out[1] and "ava" in out[1] and "draft" in out[1]
    assert any("bob" in line and "youtube" in line for line in out)
    assert cli.main(["posts", "list", "--persona", "bob"]) == 0
    assert "ava" not in capsys.readouterr().out


def test_approve_a_day_then_hold_one_platform(planned, capsys) -> None:
    assert cli.main(["posts", "approve", "--persona", "ava", "--day", TOMORROW]) == 0
    assert set(states(planned).values()) == {"scheduled"}
    assert states(planned, "bob") == {(f"{TOMORROW}-1", "youtube"): "draft"}, "another persona is untouched"
    args = ["posts", "hold", "--persona", "ava", "--post", f"{TOMORROW}-1", "--platform", "facebook"]
    assert cli.main(args) == 0
    assert states(planned)[(f"{TOMORROW}-1", "facebook")] == "held"
    assert states(planned)[(f"{TOMORROW}-1", "instagram")] == "scheduled"
    assert "facebook: hold -> held" in capsys.readouterr().out


def test_reschedule_needs_an_offset_and_a_future_time(planned, capsys) -> None:
    post = ["--persona", "ava", "--post", f"{TOMORROW}-2"]
    assert cli.main(["posts", "reschedule", *post, "--at", "2026-12-07T20:00"]) == 1
    assert "no timezone offset" in capsys.readouterr().err
    assert cli.main(["posts", "reschedule", *post, "--at", "2026-12-05T20:00:00+00:00"]) == 1
    assert "has passed; use publish now" in capsys.readouterr().out
    assert cli.main(["posts", "reschedule", *post, "--at", "2026-12-07T20:00:00+01:00"]) == 0
    row = review.get(planned, PostKey("ava", f"{TOMORROW}-2", "tiktok"))
    assert row is not None and row.publish_at == datetime(2026, 12, 7, 19, 0, tzinfo=UTC) and row.status == "draft"


def test_publish_now_makes_the_post_due_for_the_sensor_at_once(planned) -> None:
    assert due_posts(planned, NOW) == []
    assert cli.main(["posts", "publish-now", "--persona", "ava", "--post", f"{TOMORROW}-2"]) == 0
    assert [item.key for item in due_posts(planned, NOW)] == [PostKey("ava", f"{TOMORROW}-2", "tiktok")]


def test_an_unknown_post_and_mark_posted_on_a_draft_are_refused_with_the_fix(planned, capsys) -> None:
    assert cli.main(["posts", "approve", "--persona", "ava", "--post", "nope"]) == 1
    assert "posts list" in capsys.readouterr().out
    assert cli.main(["posts", "mark-posted", "--persona", "ava", "--post", f"{TOMORROW}-2"]) == 1
    assert "only a post whose outbox bundle is ready_to_post" in capsys.readouterr().out


def test_a_bad_persona_name_is_an_argument_error(planned, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["posts", "approve", "--persona", "../ava", "--day", TOMORROW])
    assert exit_.value.code == 2 and "--persona" in capsys.readouterr().err
