"""A writer backed by OpenRouter or any OpenAI-compatible `/chat/completions` endpoint.

The model is asked for JSON matching a schema derived from `PlannedPost`, and its reply is never trusted: it is
normalised where the fix is unambiguous (naive times read in the persona's timezone, platforms clamped to the
persona's, YouTube dropped from non-video posts, the LoRA trigger put in front of image prompts, ids assigned),
then validated by `plan.py` and the persona rules. Anything else wrong is sent back to the model with the
problems listed, a bounded number of times, and then fails with those problems in the message: a plan is either
valid or an error, never silently empty (the original project turned bad JSON into zero posts).

Transport faults (429, 5xx, timeouts, dropped connections) are retried (`influencer_pipeline.retries`, on tenacity)
with exponential backoff and jitter, honouring Retry-After; a refused key is not retried, since it will not fix
itself. The API key lives in a `Secret`, and every server text we quote is redacted (the key, URL credentials, token
shapes) before it is cut short, so no exception, log line or repr can show the key or its first characters.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

import requests
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from influencer_pipeline.content.plan import (
    CAPTION_LIMITS,
    HASHTAG_LIMITS,
    YOUTUBE_TITLE_LIMIT,
    ContentPlan,
    PlannedPost,
)
from influencer_pipeline.content.writers import (
    VIDEO_ONLY_PLATFORMS,
    VIDEO_PLATFORMS,
    WriterError,
    WriterUsage,
    image_prompt_prefix,
    local_time,
    persona_rule_problems,
    post_count,
    publish_slots,
)
from influencer_pipeline.personas import Persona
from influencer_pipeline.redaction import Secret, redact, redact_and_clip, split_userinfo, url_password
from influencer_pipeline.retries import Backoff, Retryable, RetryAfterTooLong, call_with_retries
from influencer_pipeline.retry_after import retry_after_seconds

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENROUTER_API_KEY"
OPENROUTER_URL = "https://openrouter.ai/api/v1"
APP_URL = "https://github.com/influencer-pipeline/influencer-pipeline"  # OpenRouter's app attribution
APP_TITLE = "influencer-pipeline"
RETRYABLE_STATUS = frozenset({408, 429, *range(500, 600)})
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 300.0  # a longer wait is better left to the run's own retry policy than slept through here
MAX_PROBLEMS = 6  # validation problems quoted back to the model and in the final error
SERVER_TEXT_LIMIT = 300  # how much of a server's error message is quoted


@dataclass(frozen=True)
class ChatReply:
    """The text of a chat completion and why it stopped ('length' means it was cut off)."""

    content: str
    finish_reason: str


class OpenAIChatWriter:
    """`Writer` over an OpenAI-compatible chat API; `api_key` defaults to the `OPENROUTER_API_KEY` variable.

    `max_retries` bounds the retries of each request on transport faults; `invalid_output_retries` bounds how
    often the model is asked again after an invalid plan. `price_per_1k` (prompt, completion) in USD per 1000
    tokens prices replies that carry no `usage.cost` (OpenRouter's own figure is preferred when present).
    """

    def __init__(
        self,
        base_url: str = OPENROUTER_URL,
        api_key: str | None = None,
        model: str = "openai/gpt-4o-mini",
        timeout_s: float = 60,
        max_retries: int = 4,
        invalid_output_retries: int = 2,
        backoff_s: float = 1.0,
        price_per_1k: tuple[float, float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._shown_url = redact(self.base_url)  # a base URL may carry user:password@ (a proxy's credentials)
        # Requests go to the URL without them: HTTP Basic from the URL when there is no key, else the key as Bearer
        # (both cannot be sent; requests would silently replace the key with the URL's Basic credentials).
        self._endpoint, self._basic = split_userinfo(self.base_url)
        self._key = Secret(api_key if api_key is not None else os.environ.get(API_KEY_ENV, ""))
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.invalid_output_retries = invalid_output_retries
        self.backoff_s = backoff_s
        self.price_per_1k = price_per_1k
        self._sleep = sleep  # waits between retries; tests record them instead of timing them
        self.name = f"openai-chat:{model}"

    def __repr__(self) -> str:
        return f"OpenAIChatWriter(base_url={self._shown_url!r}, model={self.model!r}, api_key={self._key!r})"

    def plan_day(self, persona: Persona, day: date, posts: int | None = None) -> tuple[ContentPlan, WriterUsage]:
        count = post_count(persona, posts)
        if not self._key.reveal() and self.base_url == OPENROUTER_URL:
            raise WriterError(f"no API key for OpenRouter. Fix: set {API_KEY_ENV} (or use the template writer)")
        messages = build_messages(persona, day, count)
        usage = WriterUsage(model=self.model)
        problems: list[str] = []
        with requests.Session() as session:
            for ask in range(1, self.invalid_output_retries + 2):
                reply = self._complete(session, messages, usage)
                plan, problems = parse_plan(reply, persona, day, count, self.name)
                if plan is not None:
                    log.info(
                        "%s planned %d posts for %s on %s (%s)", self.name, len(plan.posts), persona.slug, day, usage
                    )
                    return plan, usage
                log.warning("%s: invalid plan (reply %d): %s", self.name, ask, self._redact("; ".join(problems)))
                messages = [*messages, {"role": "assistant", "content": reply.content}, reask_message(problems)]
        raise WriterError(
            f"{self.name} gave no valid content plan for {persona.slug!r} on {day} in "
            f"{self.invalid_output_retries + 1} replies; the last one had these problems: "
            f"{self._redact('; '.join(problems))}. Fix: try a stronger model, or the template writer"
        )

    def _complete(self, session: requests.Session, messages: list[dict[str, str]], usage: WriterUsage) -> ChatReply:
        """One chat completion, retried on transport faults; adds every reply's tokens and cost to `usage`."""
        body = {"model": self.model, "messages": messages, "response_format": {"type": "json_object"}}

        def attempt() -> ChatReply:
            usage.attempts += 1
            return self._post(session, body, usage)

        def on_retry(number: int, fault: Retryable, wait: float) -> None:
            reason = self._redact(fault.reason)
            log.warning("%s: %s; retry %d of %d in %.2f s", self.name, reason, number, self.max_retries, wait)

        backoff = Backoff(
            first_s=self.backoff_s,
            jitter_s=self.backoff_s,
            max_backoff_s=MAX_BACKOFF_S,
            max_retry_after_s=MAX_RETRY_AFTER_S,
        )
        try:
            return call_with_retries(
                attempt, retries=self.max_retries, backoff=backoff, sleep=self._sleep, on_retry=on_retry
            )
        except RetryAfterTooLong as too_long:
            raise WriterError(
                f"{self._shown_url} asks to wait {too_long.wait_s:.0f} s before retrying "
                f"({self._redact(too_long.failure.reason)}). Fix: try again later, or raise the account's rate limit"
            ) from None
        except Retryable as fault:
            raise WriterError(
                f"{self._shown_url} failed {self.max_retries + 1} times in a row; last: {self._redact(fault.reason)}. "
                "Fix: check the service status and base_url, or try again later"
            ) from None

    def _post(self, session: requests.Session, body: dict[str, Any], usage: WriterUsage) -> ChatReply:
        url = f"{self._endpoint}/chat/completions"
        try:
            auth = None if self._key.reveal() else self._basic
            response = session.post(url, json=body, headers=self._headers(), auth=auth, timeout=self.timeout_s)
        except requests.Timeout:
            raise Retryable(f"no reply within {self.timeout_s:g} s") from None
        except requests.ConnectionError as exc:
            detail = redact_and_clip(str(exc), SERVER_TEXT_LIMIT, self._key, url_password(self.base_url))
            raise Retryable(f"connection failed ({type(exc).__name__}: {detail})") from None
        if response.status_code in (401, 403):
            raise WriterError(
                f"{self._shown_url} refused the API key (HTTP {response.status_code}: {self._server_text(response)}). "
                f"Fix: check {API_KEY_ENV}: it must be a valid, unrevoked key with credit for {self.model!r}"
            )
        if response.status_code == 402:  # OpenRouter: the account is out of credit; retrying cannot help
            raise WriterError(
                f"{self._shown_url} refused the request for lack of credit (HTTP 402: "
                f"{self._server_text(response)}). Fix: add credit to the account behind {API_KEY_ENV} "
                "(https://openrouter.ai/credits), or use the template writer"
            )
        if response.status_code in RETRYABLE_STATUS:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            raise Retryable(f"HTTP {response.status_code}: {self._server_text(response)}", wait)
        if response.status_code != 200:
            raise WriterError(
                f"{self._shown_url} rejected the request (HTTP {response.status_code}: {self._server_text(response)}). "
                f"Fix: check the model name {self.model!r} (it must support JSON output) and base_url"
            )
        return self._read(response, usage)

    def _read(self, response: requests.Response, usage: WriterUsage) -> ChatReply:
        """The reply's text; a 200 that is not a completion (a proxy page, a provider error) counts as transient."""
        try:
            data = response.json()
        except ValueError:
            raise Retryable("HTTP 200 with a body that is not JSON") from None
        if not isinstance(data, dict):
            raise Retryable("HTTP 200 with a JSON body that is not an object")
        self._add_usage(usage, data)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            error = data.get("error")
            detail = error.get("message", "") if isinstance(error, dict) else ""
            raise Retryable(f"HTTP 200 without choices {self._clip(str(detail))}".rstrip())
        message = choices[0].get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers send content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return ChatReply(content if isinstance(content, str) else "", str(choices[0].get("finish_reason") or ""))

    def _add_usage(self, usage: WriterUsage, data: dict[str, Any]) -> None:
        """Tokens from `usage`; cost from OpenRouter's `usage.cost`, else estimated from `price_per_1k`."""
        counts = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt = _number(counts.get("prompt_tokens")) or 0.0
        completion = _number(counts.get("completion_tokens")) or 0.0
        usage.prompt_tokens += int(prompt)
        usage.completion_tokens += int(completion)
        cost = _number(counts.get("cost"))
        if cost is not None:
            usage.cost_usd += cost
        elif self.price_per_1k:
            usage.cost_usd += prompt / 1000 * self.price_per_1k[0] + completion / 1000 * self.price_per_1k[1]
        if isinstance(data.get("model"), str) and data["model"]:
            usage.model = data["model"]  # the model that answered (OpenRouter may route `openrouter/auto`)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "HTTP-Referer": APP_URL, "X-Title": APP_TITLE}
        if self._key.reveal():
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        return headers

    def _server_text(self, response: requests.Response) -> str:
        """The server's own error message (OpenAI shape `{"error": {"message"}}` or raw text), short and scrubbed."""
        try:
            data = response.json()
            error = data.get("error") if isinstance(data, dict) else None
            text = error.get("message") if isinstance(error, dict) else error
            text = str(text) if text else response.text
        except ValueError:
            text = response.text
        return self._clip(" ".join(text.split()) or response.reason or "no message")

    def _redact(self, text: str) -> str:
        return redact(text, self._key, url_password(self.base_url))

    def _clip(self, text: str) -> str:
        """Server text for a message: redacted first, then cut (cutting first could keep a key's first characters)."""
        return redact_and_clip(text, SERVER_TEXT_LIMIT, self._key, url_password(self.base_url))


def _number(value: Any) -> float | None:
    """`value` as a float when the JSON held a number there (not a bool, string or null)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def reply_schema(count: int) -> dict[str, Any]:
    """The JSON schema the model must follow: `PlannedPost`'s own, less `id` (assigned here, never by the model)."""
    post = PlannedPost.model_json_schema()
    post["properties"].pop("id")
    post["required"] = [name for name in post.get("required", []) if name != "id"]
    post["properties"]["publish_at"]["description"] = "ISO 8601 date-time with the persona's UTC offset"
    return {
        "type": "object",
        "properties": {"posts": {"type": "array", "minItems": count, "maxItems": count, "items": post}},
        "required": ["posts"],
        "additionalProperties": False,
    }


def build_messages(persona: Persona, day: date, count: int) -> list[dict[str, str]]:
    """A system message with the rules and schema, and a user message that is the day's brief as JSON."""
    prefix = image_prompt_prefix(persona)
    limits = ", ".join(f"{p} {CAPTION_LIMITS[p]}" for p in persona.platforms)
    tag_limits = ", ".join(f"{p} {HASHTAG_LIMITS[p]}" for p in persona.platforms)
    video = sorted(VIDEO_PLATFORMS & set(persona.platforms))
    rules = [
        f"Plan exactly {count} posts for the date in the brief, one at each of the brief's publish_times.",
        f"Use only the persona's platforms: {', '.join(persona.platforms)}. Write a caption for each platform a post "
        f"uses, in the persona's tone, without hashtags; caption limits in characters: {limits}.",
        "hashtags: words without '#', mixing the persona's hashtags and the theme's; a post has at most the "
        f"smallest limit among its platforms: {tag_limits}.",
        "Take each post's theme from the persona's themes, a different one for each post.",
        f"Every image prompt starts with '{prefix}' (the persona's LoRA trigger), then the scene, framing and light"
        + (f", and ends with the style notes: {persona.style_notes}." if persona.style_notes.strip() else "."),
        "format: 'image' (1 image prompt), 'carousel' (2-10 image prompts) or 'reel' (2-4 stills animated into "
        "a short video). Mix formats.",
        "A reel needs a voiceover: 2-4 spoken sentences, 25-37 words (10-15 seconds), a hook first.",
        f"youtube takes reels only, and needs a title of at most {YOUTUBE_TITLE_LIMIT} characters.",
        "publish_at: ISO 8601 with the UTC offset of the persona's timezone, on the brief's date.",
    ]
    if video:
        rules.append(f"At least one post is a reel, because the persona posts to {' and '.join(video)}.")
    system = (
        "You plan one day of social media posts for a virtual influencer. Reply with one JSON object and nothing "
        "else, matching this JSON schema:\n"
        + json.dumps(reply_schema(count), separators=(",", ":"))
        + "\n\nRules:\n"
        + "\n".join(f"- {rule}" for rule in rules)
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": json.dumps(brief(persona, day, count))}]


def brief(persona: Persona, day: date, count: int) -> dict[str, Any]:
    """What the model needs to know about the persona and the day (persona fields keep `Persona`'s names)."""
    return {
        "persona": {
            "slug": persona.slug,
            "display_name": persona.name,
            "trigger_word": persona.trigger,
            "class_word": persona.class_word,
            "style_notes": persona.style_notes,
            "tone": persona.tone,
            "themes": list(persona.themes),
            "hashtags": list(persona.hashtags),
            "platforms": list(persona.platforms),
            "timezone": persona.timezone,
            "posting_times": list(persona.posting_times),
        },
        "date": day.isoformat(),
        "weekday": day.strftime("%A"),
        "posts": count,
        "publish_times": [slot.isoformat() for slot in publish_slots(persona, day, count)],
    }


def reask_message(problems: list[str]) -> dict[str, str]:
    listed = "\n".join(f"- {p}" for p in problems)
    return {
        "role": "user",
        "content": f"That reply is not a valid plan:\n{listed}\nReply again with the complete, corrected JSON object.",
    }


def parse_plan(
    reply: ChatReply, persona: Persona, day: date, count: int, writer: str
) -> tuple[ContentPlan | None, list[str]]:
    """The validated plan in `reply`, or None and the problems to send back (at most `MAX_PROBLEMS`)."""
    cut = ["the reply was cut off (finish_reason 'length'): keep it shorter"] if reply.finish_reason == "length" else []
    text = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", reply.content)
    if not text.strip():
        return None, [*cut, "the reply was empty"]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [*cut, f"the reply is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"]
    data = {"posts": data} if isinstance(data, list) else data
    if not isinstance(data, dict) or not isinstance(data.get("posts"), list):
        return None, ['the reply must be a JSON object {"posts": [...]}']
    posts = [normalise_post(post, i, persona, day) for i, post in enumerate(data["posts"])]
    try:
        plan = ContentPlan(persona=persona.slug, date=day, posts=posts, writer=writer)
    except ValidationError as exc:
        return None, [_describe(error) for error in exc.errors()[:MAX_PROBLEMS]]
    problems = persona_rule_problems(plan, persona, day, count)
    return (None, problems[:MAX_PROBLEMS]) if problems else (plan, [])


def _describe(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "plan"
    return redact_and_clip(f"{where}: {str(error['msg']).removeprefix('Value error, ')}", SERVER_TEXT_LIMIT)


def normalise_post(post: Any, index: int, persona: Persona, day: date) -> Any:
    """Fix what has one right answer; leave everything else for validation to report."""
    if not isinstance(post, dict):
        return post
    post = {**post, "id": f"{day.isoformat()}-{index + 1}"}
    if "publish_at" in post:
        post["publish_at"] = _localise(post["publish_at"], persona, day)
    if isinstance(post.get("platforms"), list):
        keep_video = post.get("format") == "reel"
        allowed = [p for p in persona.platforms if keep_video or p not in VIDEO_ONLY_PLATFORMS]
        post["platforms"] = [p for p in allowed if p in post["platforms"]]
        if isinstance(post.get("captions"), dict):
            post["captions"] = {p: c for p, c in post["captions"].items() if p in post["platforms"]}
    if isinstance(post.get("image_prompts"), list):
        post["image_prompts"] = [_with_trigger(prompt, persona) for prompt in post["image_prompts"]]
    return post


def _localise(value: Any, persona: Persona, day: date) -> Any:
    """An ISO date-time in the persona's timezone: naive ones are read there, bare clock times put on `day`."""
    if not isinstance(value, str):
        return value
    zone = ZoneInfo(persona.timezone)
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        try:
            return local_time(persona, day, clock_time.fromisoformat(value.strip())).isoformat()
        except ValueError:
            return value
    if when.tzinfo is None:
        return local_time(persona, when.date(), when.time()).isoformat()
    return when.astimezone(zone).isoformat()


def _with_trigger(prompt: Any, persona: Persona) -> Any:
    """`prompt` led by the LoRA trigger and class word, which the model is asked for but sometimes forgets."""
    prefix = image_prompt_prefix(persona)
    if not isinstance(prompt, str) or not prompt.strip() or prompt.lower().startswith(prefix.lower()):
        return prompt
    rest = prompt.strip()
    if rest.lower().startswith(persona.trigger.lower()):
        rest = rest[len(persona.trigger) :].lstrip(" ,")
    return f"{prefix}, {rest}"
