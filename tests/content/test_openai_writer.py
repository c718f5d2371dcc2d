"""The OpenAI-compatible writer against the scripted stand-in: the request it sends, usage and cost, every fault
ending in success after retries or in a clear error, invalid output re-asked then refused, and a key that never
shows up in errors, logs or reprs. Waits are tens of milliseconds so the whole file runs in a few seconds."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests

from influencer_pipeline.content.openai_chat import (
    API_KEY_ENV,
    APP_TITLE,
    APP_URL,
    OpenAIChatWriter,
    retry_after_seconds,
)
from influencer_pipeline.content.writers import WriterError, image_prompt_prefix
from influencer_pipeline.personas import Persona
from tests.content.llm_standin import (
    STANDIN_KEY,
    Drop,
    InvalidJson,
    LLMStandin,
    Received,
    SchemaInvalid,
    Slow,
    Status,
    Valid,
)

KEY = STANDIN_KEY
DAY = date(2026, 11, 23)
AVA = Persona(
    slug="ava",
    trigger_word="ohwx",
    class_word="woman",
    style_notes="warm natural light",
    platforms=("instagram", "tiktok", "youtube"),
    timezone="Europe/Rome",
    posting_times=("09:30", "18:00"),
    hashtags=("travel", "slowliving"),
    tone="warm, playful",
    themes=("hidden beaches", "city walks"),
)


@pytest.fixture
def standin() -> Iterator[LLMStandin]:
    with LLMStandin() as server:
        yield server


def make_writer(standin: LLMStandin, **overrides: Any) -> OpenAIChatWriter:
    settings: dict[str, Any] = {
        "base_url": standin.url,
        "api_key": KEY,
        "model": "test/model",
        "timeout_s": 0.2,
        "max_retries": 3,
        "backoff_s": 0.01,
    }
    return OpenAIChatWriter(**(settings | overrides))


def prompt_tokens_billed(received: list[Received]) -> int:
    """What the stand-in billed for prompts, recomputed from its record (it counts 4 characters a token)."""
    return sum(len(json.dumps(record.body["messages"])) // 4 for record in received)


def test_happy_path_sends_a_schema_guided_request_and_reports_usage_and_cost(standin: LLMStandin) -> None:
    plan, usage = make_writer(standin).plan_day(AVA, DAY)

    assert plan.persona == "ava" and plan.date == DAY and plan.writer == "openai-chat:test/model"
    assert [p.id for p in plan.posts] == ["2026-11-23-1", "2026-11-23-2"]
    assert [p.publish_at.isoformat() for p in plan.posts] == ["2026-11-23T09:30:00+01:00", "2026-11-23T18:00:00+01:00"]
    [request] = standin.received
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert (request.headers["HTTP-Referer"], request.headers["X-Title"]) == (APP_URL, APP_TITLE)
    assert request.body["model"] == "test/model"
    assert request.body["response_format"] == {"type": "json_object"}
    system = request.body["messages"][0]["content"]
    assert '"publish_at"' in system and '"voiceover"' in system and '"id"' not in system
    assert "Plan exactly 2 posts" in system and "'ohwx woman'" in system
    assert request.brief["date"] == "2026-11-23" and request.brief["persona"]["timezone"] == "Europe/Rome"
    assert request.brief["publish_times"] == ["2026-11-23T09:30:00+01:00", "2026-11-23T18:00:00+01:00"]
    assert usage.attempts == 1 and usage.model == "test/model"
    assert usage.prompt_tokens == prompt_tokens_billed(standin.received) and usage.completion_tokens > 0
    assert usage.cost_usd == pytest.approx(0.0005)


def test_price_per_1k_prices_replies_without_a_cost(standin: LLMStandin) -> None:
    standin.then(Valid(cost=None))
    _, usage = make_writer(standin, price_per_1k=(1.0, 2.0)).plan_day(AVA, DAY)
    assert usage.cost_usd == pytest.approx(usage.prompt_tokens / 1000 * 1.0 + usage.completion_tokens / 1000 * 2.0)


def test_naive_times_are_read_in_the_personas_timezone_and_other_slips_are_fixed(standin: LLMStandin) -> None:
    def slips(posts: list[dict[str, Any]]) -> None:
        for post in posts:
            post["publish_at"] = post["publish_at"][:19]  # drop the offset
            post["platforms"] = [*post["platforms"], "facebook"]  # not one of Ava's platforms
            post["captions"]["facebook"] = "hello"
            post["image_prompts"] = [p.removeprefix("ohwx woman, ") for p in post["image_prompts"]]
        posts[0]["id"] = "Not A Valid Id"
        posts[1]["publish_at"] = "18:00"  # a bare clock time is put on the day

    standin.then(Valid(edit=slips, fenced=True))
    plan, _ = make_writer(standin).plan_day(AVA, DAY)
    assert [p.publish_at.isoformat() for p in plan.posts] == ["2026-11-23T09:30:00+01:00", "2026-11-23T18:00:00+01:00"]
    assert all("facebook" not in p.platforms and "facebook" not in p.captions for p in plan.posts)
    assert all(prompt.startswith(image_prompt_prefix(AVA)) for p in plan.posts for prompt in p.image_prompts)
    assert plan.posts[0].id == "2026-11-23-1"
    assert len(standin.received) == 1


def test_429_waits_as_long_as_retry_after_says(standin: LLMStandin) -> None:
    standin.then(Status(429, retry_after="0.25"), Status(429, retry_after="0.1"))
    waits: list[float] = []
    _, usage = make_writer(standin, sleep=waits.append).plan_day(AVA, DAY)
    assert len(standin.received) == 3 and usage.attempts == 3
    assert waits == [0.25, 0.1]  # exactly what the server asked (the backoff, 0.01-0.03 s here, is shorter)


@pytest.mark.parametrize(
    "faults",
    [
        [Status(500), Status(503)],
        [Slow(0.4)],
        [Drop(), Drop()],
        [Status(502), Slow(0.4), Drop()],
    ],
    ids=["5xx", "timeout", "dropped connection", "mixed"],
)
def test_transient_faults_end_in_success_after_retries(standin: LLMStandin, faults: list[Any]) -> None:
    standin.then(*faults)
    plan, usage = make_writer(standin).plan_day(AVA, DAY)
    assert len(plan.posts) == 2
    assert len(standin.received) == usage.attempts == len(faults) + 1


def test_backoff_grows_exponentially_between_retries(standin: LLMStandin) -> None:
    standin.then(Status(500), Status(500), Status(500))
    waits: list[float] = []
    make_writer(standin, backoff_s=0.05, sleep=waits.append).plan_day(AVA, DAY)
    assert len(waits) == 3 and len(standin.received) == 4
    for retry, wait in enumerate(waits):  # backoff_s * 2**retry plus up to backoff_s of jitter
        assert 0.05 * 2**retry <= wait <= 0.05 * 2**retry + 0.05


@pytest.mark.parametrize(
    ("fault", "reason"),
    [(Status(500, message="upstream exploded"), "HTTP 500: upstream exploded"), (Slow(0.4), "no reply within 0.2 s")],
    ids=["5xx", "timeout"],
)
def test_persistent_faults_end_in_a_clear_error_after_the_retries(standin: LLMStandin, fault: Any, reason: str) -> None:
    standin.then(*[fault] * 4)
    with pytest.raises(WriterError) as info:
        make_writer(standin).plan_day(AVA, DAY)
    assert len(standin.received) == 4
    assert "failed 4 times in a row" in str(info.value) and reason in str(info.value)


@pytest.mark.parametrize("code", [401, 403])
def test_a_refused_key_is_not_retried_and_names_the_variable(standin: LLMStandin, code: int) -> None:
    standin.then(Status(code, message="No auth credentials found"))
    with pytest.raises(WriterError) as info:
        make_writer(standin).plan_day(AVA, DAY)
    assert len(standin.received) == 1
    assert f"HTTP {code}: No auth credentials found" in str(info.value) and API_KEY_ENV in str(info.value)


def test_other_client_errors_are_not_retried_and_name_the_model(standin: LLMStandin) -> None:
    standin.then(Status(400, message="test/model is not a valid model ID"))
    with pytest.raises(WriterError, match=r"HTTP 400: test/model is not a valid model ID.*'test/model'"):
        make_writer(standin).plan_day(AVA, DAY)
    assert len(standin.received) == 1


def test_a_retry_after_beyond_five_minutes_is_an_error_not_a_sleep(standin: LLMStandin) -> None:
    standin.then(Status(429, retry_after="3600"))
    with pytest.raises(WriterError, match="asks to wait 3600 s"):
        make_writer(standin).plan_day(AVA, DAY)
    assert len(standin.received) == 1


def test_invalid_json_is_asked_again_with_the_problem(standin: LLMStandin) -> None:
    standin.then(InvalidJson())
    plan, usage = make_writer(standin).plan_day(AVA, DAY)
    assert len(plan.posts) == 2 and usage.attempts == 2
    assert usage.prompt_tokens == prompt_tokens_billed(standin.received)
    assert usage.cost_usd == pytest.approx(0.001)  # both replies were billed
    messages = standin.received[1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"].startswith("Sure!") and "the reply is not valid JSON" in messages[3]["content"]


def test_a_plan_breaking_persona_rules_is_asked_again(standin: LLMStandin) -> None:
    def wrong_day(posts: list[dict[str, Any]]) -> None:
        posts[0]["publish_at"] = "2026-11-24T09:30:00+01:00"

    standin.then(Valid(edit=wrong_day))
    plan, _ = make_writer(standin).plan_day(AVA, DAY)
    assert plan.posts[0].publish_at.date() == DAY
    assert "is not on 2026-11-23 in Europe/Rome" in standin.received[1].body["messages"][-1]["content"]


def test_output_that_stays_invalid_fails_naming_the_rule(standin: LLMStandin) -> None:
    standin.then(SchemaInvalid(), SchemaInvalid(), SchemaInvalid())
    with pytest.raises(WriterError) as info:
        make_writer(standin, invalid_output_retries=2).plan_day(AVA, DAY)
    assert len(standin.received) == 3
    message = str(info.value)
    assert "gave no valid content plan for 'ava' on 2026-11-23 in 3 replies" in message
    assert "posts.0.hashtags: List should have at most 30 items" in message


def test_the_wrong_number_of_posts_is_refused_and_never_returned_empty(standin: LLMStandin) -> None:
    def none(posts: list[dict[str, Any]]) -> None:
        posts.clear()

    standin.then(Valid(edit=none), Valid(edit=none))
    with pytest.raises(WriterError, match="List should have at least 1 item"):
        make_writer(standin, invalid_output_retries=1).plan_day(AVA, DAY, posts=2)


def test_a_missing_openrouter_key_fails_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(WriterError, match=f"set {API_KEY_ENV}"):
        OpenAIChatWriter().plan_day(AVA, DAY)


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, standin: LLMStandin) -> None:
    monkeypatch.setenv(API_KEY_ENV, KEY)
    OpenAIChatWriter(base_url=standin.url, timeout_s=1).plan_day(AVA, DAY)
    assert standin.received[0].headers["Authorization"] == f"Bearer {KEY}"


def test_the_key_never_leaks_into_errors_logs_or_reprs(standin: LLMStandin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"echo_key": True, "message": "bad luck"}
    standin.then(Status(429, retry_after="0", **echo), Status(500, **echo), Drop(), Slow(0.4), InvalidJson())
    writer = make_writer(standin, max_retries=5)
    writer.plan_day(AVA, DAY)
    standin.then(Status(401, **echo))
    with pytest.raises(WriterError) as info:
        writer.plan_day(AVA, DAY)

    assert KEY in standin.received[0].headers["Authorization"]  # the key was really sent, and echoed back
    assert "bad luck (you sent Bearer ***)" in str(info.value)
    shown = [
        str(info.value),
        "".join(traceback.format_exception(info.value)),
        caplog.text,
        repr(writer),
        str(writer),
        repr(vars(writer)),
    ]
    assert all(KEY not in text for text in shown)
    assert "bad luck (you sent Bearer ***)" in caplog.text  # server text is quoted, scrubbed


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds(" 0.5 ") == 0.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    for unusable in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(unusable) is None


# -- the stand-in is stricter than OpenRouter: key, model, JSON mode; 401/402/429 on demand -----------------------


def test_a_wrong_key_is_refused_by_the_stand_in_and_named_by_the_writer(standin: LLMStandin) -> None:
    with pytest.raises(WriterError) as info:
        make_writer(standin, api_key="sk-or-v1-not-the-key-000").plan_day(AVA, DAY)
    assert standin.refused == [(401, "No auth credentials found")] and standin.received == []
    assert "HTTP 401" in str(info.value) and API_KEY_ENV in str(info.value)
    assert "not-the-key" not in str(info.value)


def test_an_unknown_model_is_refused_and_the_writer_names_it(standin: LLMStandin) -> None:
    with pytest.raises(WriterError, match=r"HTTP 400: 'no/such-model' is not a valid model ID.*'no/such-model'"):
        make_writer(standin, model="no/such-model").plan_day(AVA, DAY)
    assert [code for code, _ in standin.refused] == [400] and standin.received == []


def test_the_stand_in_refuses_a_request_without_json_mode(standin: LLMStandin) -> None:
    """The writer always asks for JSON (the happy path passes the same check); a request without it is refused."""
    body = {"model": "test/model", "messages": [{"role": "user", "content": "{}"}]}
    answer = requests.post(
        f"{standin.url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=5
    )
    assert answer.status_code == 400 and "response_format" in answer.json()["error"]["message"]
    make_writer(standin).plan_day(AVA, DAY)
    assert standin.received[0].body["response_format"]["type"] in ("json_object", "json_schema")


def test_spent_credits_are_a_402_the_writer_reports_as_credits_without_retrying(standin: LLMStandin) -> None:
    standin.exhaust_credits()
    with pytest.raises(WriterError) as info:
        make_writer(standin).plan_day(AVA, DAY)
    assert [code for code, _ in standin.refused] == [402]  # asked once: more credit will not appear by retrying
    assert "HTTP 402" in str(info.value) and "credit" in str(info.value).lower()
    assert "model name" not in str(info.value)


def test_a_revoked_key_is_a_401_and_rate_limits_are_waited_out(standin: LLMStandin) -> None:
    standin.rate_limit(2, retry_after="0.05")
    plan, _ = make_writer(standin).plan_day(AVA, DAY)
    assert plan.posts and [code for code, _ in standin.refused] == [429, 429]

    standin.revoke_key()
    with pytest.raises(WriterError, match="refused the API key"):
        make_writer(standin).plan_day(AVA, DAY)
    assert standin.refused[-1] == (401, "User not found.")
