"""resources/n8n/approve-posts.json in the real n8n (issue 13, item 2): a persona's drafts are sent for approval, the
answer comes back on n8n's resume webhook, and review_posts, launched over GraphQL through the token-guarded
webserver and run by a real dagster-daemon, records it in the post ledger.

Set up as docs/N8N.md says (import the folder, import the credentials, edit Config, publish, `n8n start`), on the
fixtures of test_real_n8n.py; the approver is a loopback endpoint that records what n8n sends.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import graphql
import pytest
import requests
from dagster_graphql.schema import create_schema
from PIL import Image

from influencer_pipeline.content.plan import ContentPlan, PlannedPost
from influencer_pipeline.media import LocalMediaStore
from influencer_pipeline.publishing import review
from influencer_pipeline.publishing.ledger import Ledger, default_url
from influencer_pipeline.publishing.review import PlanEntry
from tests.n8n.n8n_server import N8n
from tests.n8n.services import endpoint, stop_automation
from tests.n8n.test_real_n8n import CREDENTIALS, N8N_ENV, configured
from tests.n8n.workflow_files import WORKFLOWS, http_requests, load

WORKFLOW = "ipApprovePosts01"
CALLER_CREDENTIAL = {
    "id": "approvePostsCaller",
    "name": "Approve posts caller",
    "type": "httpHeaderAuth",
    "data": {"name": "X-Influencer-Caller", "value": "approver-token"},
}
CALLER = {"X-Influencer-Caller": "approver-token", "Content-Type": "application/json"}
TOMORROW = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()


def test_the_workflow_file_is_importable_and_its_graphql_is_valid_for_dagster() -> None:
    workflow = load("approve-posts")
    assert workflow["id"] == WORKFLOW and "tags" not in workflow  # the conventions of test_files.py
    names = [node["name"] for node in workflow["nodes"]]
    assert len(set(names)) == len(names)
    schema = create_schema().graphql_schema
    requests_ = {r.node: r for r in http_requests(workflow)}
    for node in ("Launch review_posts", "Review run result"):
        assert requests_[node].credential == "Dagster GraphQL token"
        assert graphql.validate(schema, graphql.parse(requests_[node].graphql)) == []
    assert "record_decisions" in json.dumps(workflow), "the run config path of review_posts"


def seed_day(tmp_path: Path) -> Ledger:
    """Tomorrow's two drafts for ava, rendered and registered for review (what the due-posts sensor leaves)."""
    store = LocalMediaStore(tmp_path / "media")
    publish = datetime.fromisoformat(TOMORROW).replace(tzinfo=UTC)
    posts = [
        PlannedPost(id=f"{TOMORROW}-{n}", theme="market", format="image", image_prompts=["ohwx woman"],
                    captions={"instagram": f"Market morning {n}"}, platforms=["instagram"],
                    publish_at=publish.replace(hour=hour))
        for n, hour in ((1, 9), (2, 18))
    ]  # fmt: skip
    for post in posts:
        buffer = io.BytesIO()
        Image.new("RGB", (216, 270), (200, 120, 90)).save(buffer, "PNG")
        store.write_bytes(f"personas/ava/content/{TOMORROW}/images/{post.id}-1.png", buffer.getvalue())
    plan = ContentPlan(persona="ava", date=date.fromisoformat(TOMORROW), posts=posts)
    store.write_bytes(f"personas/ava/content/{TOMORROW}/plan.json", plan.model_dump_json().encode())
    ledger = Ledger(default_url(tmp_path / "work"))
    ledger.upgrade()
    entries = [PlanEntry(p.id, "instagram", p.publish_at) for p in posts]
    now = datetime.now(UTC)
    review.register_day(ledger, "ava", TOMORROW, entries, approval="required", content_version="v1", now=now)
    return ledger


def publish_approval_workflow(n8n: N8n, tmp_path: Path, workflow: dict) -> None:
    n8n.cli("import:workflow", "--separate", f"--input={WORKFLOWS}")
    n8n.import_credentials([*CREDENTIALS, CALLER_CREDENTIAL])
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / f"{WORKFLOW}.json").write_text(json.dumps(workflow))
    n8n.cli("import:workflow", "--separate", f"--input={edited}")
    n8n.cli("publish:workflow", f"--id={WORKFLOW}")


@pytest.mark.slow
def test_drafts_are_sent_for_approval_and_the_answer_is_recorded_by_review_posts(
    dagster_dev: str, tmp_path: Path
) -> None:
    ledger = seed_day(tmp_path)
    stop_automation(dagster_dev)
    n8n = N8n(tmp_path / "n8n", env=N8N_ENV)
    with endpoint() as approver:
        workflow = configured("approve-posts", dagsterUrl=dagster_dev, approvalUrl=approver.url, pollSeconds=2)
        publish_approval_workflow(n8n, tmp_path, workflow)
        with n8n.serving():
            n8n.wait_for_webhook("approve-posts")
            check_refusals(n8n, approver)
            answer_url = check_question(n8n, approver)
            check_answer(n8n, approver, answer_url, ledger)


def check_refusals(n8n: N8n, approver) -> None:
    """An unknown caller gets 403; a bad persona or day gets 400 naming the field; nothing is sent to the approver."""
    anonymous = n8n.webhook("approve-posts", b'{"persona": "ava"}', {"Content-Type": "application/json"})
    assert anonymous.status_code == 403, anonymous.text
    bad = n8n.webhook("approve-posts", json.dumps({"persona": "../Ava", "day": "tomorrow"}).encode(), CALLER)
    assert bad.status_code == 400, bad.text
    assert 'persona: got "../Ava"' in bad.json()["error"] and "day: got" in bad.json()["error"]
    assert not approver.received


def check_question(n8n: N8n, approver) -> str:
    """POST {persona, day}: 202 ASKED, and the approver receives the day's drafts with an answer URL."""
    before = len(n8n.executions(WORKFLOW))
    asked = n8n.webhook("approve-posts", json.dumps({"persona": "ava", "day": TOMORROW}).encode(), CALLER)
    assert asked.status_code == 202, (asked.text, n8n.log_tail())
    assert asked.json() == {"status": "ASKED", "persona": "ava", "day": TOMORROW, "waiting": 2}
    [(headers, question)] = approver.received
    assert headers["Authorization"] == "Bearer notify-token"
    assert question["event"] == "approve_posts.question" and question["persona"] == "ava"
    waiting = {p["post_id"]: p for p in question["waiting"]}
    assert set(waiting) == {f"{TOMORROW}-1", f"{TOMORROW}-2"}
    first = waiting[f"{TOMORROW}-1"]
    assert (first["state"], first["platform"], first["caption"]) == ("draft", "instagram", "Market morning 1")
    assert requests.get(first["image"], timeout=60).headers["content-type"] == "image/png", "a link that shows it"
    assert "/webhook-waiting/" in question["answerUrl"]
    parked = n8n.wait_for_execution(WORKFLOW, before, parked=True)  # n8n records "waiting" just after answering
    assert parked["status"] == "waiting" and len(n8n.executions(WORKFLOW)) == before + 1
    return question["answerUrl"]


def check_answer(n8n: N8n, approver, answer_url: str, ledger: Ledger) -> None:
    """The answer resumes the execution (only with the caller's header); review_posts records approve and hold;
    a post that was not asked about is refused; the outcome goes back to the approver."""
    decisions = {
        "reviewer": "mia",
        "decisions": [
            {"post_id": f"{TOMORROW}-1", "action": "approve"},
            {"post_id": f"{TOMORROW}-2", "platform": "instagram", "action": "hold"},
            {"post_id": "2020-01-01-1", "action": "approve"},
        ],
    }
    body = json.dumps(decisions).encode()
    forged = requests.post(answer_url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert forged.status_code == 403, forged.text
    assert n8n.executions(WORKFLOW)[-1]["status"] == "waiting", "an answer without the caller's header is ignored"

    approver.received.clear()
    before = len(n8n.executions(WORKFLOW)) - 1
    answered = requests.post(answer_url, data=body, headers=CALLER, timeout=60)
    assert answered.status_code == 200, answered.text
    execution = n8n.wait_for_execution(WORKFLOW, before)
    assert execution["status"] == "success", (execution["status"], n8n.log_tail())
    [(_, outcome)] = approver.received
    assert outcome["status"] == "RECORDED" and outcome["error"] is None, outcome
    assert outcome["refused"] == ['"2020-01-01-1": not one of the posts asked about']
    rows = {row.post_id: row for row in review.day_posts(ledger, "ava", TOMORROW)}
    assert (rows[f"{TOMORROW}-1"].status, rows[f"{TOMORROW}-1"].reviewer) == ("scheduled", "n8n:mia")
    assert (rows[f"{TOMORROW}-2"].status, rows[f"{TOMORROW}-2"].reviewer) == ("held", "n8n:mia")
