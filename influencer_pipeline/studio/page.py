"""The studio page: server-rendered HTML from an `Overview`, with no script and no framework.

Every value is escaped (`html.escape`): captions, themes and error messages come from an LLM, from persona.yaml
and from platforms. Media are linked as `<base>/studio/media/<key>`, which the studio app serves from the media
store; a reel is a `<video controls>` the browser plays in place.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from html import escape
from urllib.parse import quote

from influencer_pipeline.studio.overview import AccountLine, Overview, PersonaCard, PostCard

REVIEW_JOB = "/locations/influencer_pipeline/jobs/review_posts/playground"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2rem; color: #1d2330; background: #f6f7f9; }
h1 { margin: 0 0 .2rem; } h2 { margin: 1.6rem 0 .4rem; } a { color: #2251c5; }
.meta { color: #5c6370; font-size: .9rem; }
section.persona { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: .8rem 1rem; }
table.facts td { padding: .15rem .8rem .15rem 0; vertical-align: top; }
table.week-grid { border-collapse: collapse; width: 100%; table-layout: fixed; margin-top: .6rem; }
table.week-grid th { background: #eef1f5; font-weight: 600; padding: .3rem; }
table.week-grid td { border: 1px solid #dde1e7; vertical-align: top; padding: .3rem; height: 9rem; }
td.past { background: #f0f0f0; color: #999; } td.today { outline: 2px solid #2251c5; }
.day { font-size: .8rem; color: #5c6370; }
.post { border-radius: 6px; padding: .25rem; margin: .25rem 0; background: #f8fafc; border-left: 4px solid #9aa4b2; }
.post img.thumb, .post video { width: 100%; max-height: 11rem; object-fit: cover; border-radius: 4px; }
.post .caption { font-size: .78rem; max-height: 3.2em; overflow: hidden; }
.badge { display: inline-block; font-size: .72rem; padding: 0 .35rem; border-radius: 4px; background: #e4e7ec; }
.state-draft { border-left-color: #d98e04; } .state-held { border-left-color: #7c3aed; }
.state-scheduled { border-left-color: #2251c5; } .state-ready_to_post { border-left-color: #0e9f6e; }
.state-published { border-left-color: #057a55; } .state-failed, .state-blocked { border-left-color: #c81e1e; }
pre.failure { white-space: pre-wrap; background: #fdf2f2; border: 1px solid #f8b4b4; padding: .5rem; }
.invalid { background: #fff8e6; border: 1px solid #f3d38b; padding: .5rem 1rem; border-radius: 8px; }
"""


def media_url(base: str, key: str) -> str:
    return f"{base}/studio/media/{quote(key)}"


def _when(moment: datetime | None, today: date) -> str:
    if moment is None:
        return "no expiry reported"
    days = (moment.date() - today).days
    label = "expired" if days < 0 else f"in {days} day{'s' if days != 1 else ''}"
    return f"{moment:%Y-%m-%d %H:%M} UTC ({label})"


def _accounts(lines: list[AccountLine], today: date) -> str:
    if not lines:
        return "none linked (outbox only): <code>influencer-pipeline accounts link PLATFORM --persona NAME</code>"
    items = [
        f"<li>{escape(a.platform)}: {escape(a.name)}, token expires {escape(_when(a.expires_at, today))}"
        + (f", <strong>{escape(a.health)}</strong>" if a.health and a.health != "ok" else "")
        + "</li>"
        for a in lines
    ]
    return "<ul>" + "".join(items) + "</ul>"


def _post(card: PostCard, base: str) -> str:
    media = ""
    if card.video_key:
        poster = f' poster="{escape(media_url(base, card.image_key))}"' if card.image_key else ""
        media = f'<video controls preload="metadata"{poster} src="{escape(media_url(base, card.video_key))}"></video>'
    elif card.image_key:
        alt = escape(card.theme or card.post_id)
        media = f'<img class="thumb" loading="lazy" alt="{alt}" src="{escape(media_url(base, card.image_key))}">'
    states = ", ".join(f"{escape(p)}: {escape(s)}" for p, s in card.states.items())
    note = f'<div class="meta">{escape(card.note)}</div>' if card.note else ""
    return (
        f'<div class="post state-{escape(card.state)}" data-post="{escape(card.post_id)}">{media}'
        f'<div><strong>{card.time:%H:%M}</strong> <span class="badge">{escape(card.state)}</span> '
        f"{escape(card.format)}</div>"
        f'<div class="meta">{states}</div>'
        f'<div class="caption" title="{escape(card.caption)}">{escape(card.caption)}</div>{note}</div>'
    )


def week_grid(card: PersonaCard, overview: Overview, base: str) -> str:
    """Monday-to-Sunday rows covering the shown days; a cell per day with its posts."""
    first = date.fromisoformat(overview.days[0])
    last = date.fromisoformat(overview.days[-1])
    start = first - timedelta(days=first.weekday())
    by_day: dict[str, list[PostCard]] = {}
    for post in card.posts:
        by_day.setdefault(post.day, []).append(post)
    header = "".join(f"<th>{name}</th>" for name in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"))
    rows = []
    day = start
    while day <= last:
        cells = []
        for _ in range(7):
            key = day.isoformat()
            classes = "past" if day < first else ("today" if day == overview.today else "")
            posts = "".join(_post(p, base) for p in by_day.get(key, [])) if day >= first else ""
            cells.append(f'<td class="{classes}" data-day="{key}"><div class="day">{day:%a %d %b}</div>{posts}</td>')
            day += timedelta(days=1)
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="week-grid"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _persona(card: PersonaCard, overview: Overview, base: str) -> str:
    title = escape(card.name or card.slug) + (f" <span class='meta'>({escape(card.slug)})</span>" if card.name else "")
    problem = f'<pre class="failure">{escape(card.problem)}</pre>' if card.problem else ""
    sheet = (
        f' (<a href="{escape(media_url(base, card.contact_sheet_key))}">contact sheet</a>)'
        if card.contact_sheet_key
        else ""
    )
    if card.failure:
        f = card.failure
        failure = (
            f'<pre class="failure">{escape(f.message)}</pre><div class="meta">{escape(f.job)}, '
            f'{f.at:%Y-%m-%d %H:%M} UTC, <a href="{base}/runs/{escape(f.run_id)}">run {escape(f.run_id[:8])}</a></div>'
        )
    else:
        failure = "none"
    counts: dict[str, int] = {}
    for post in card.posts:
        counts[post.state] = counts.get(post.state, 0) + 1
    summary = ", ".join(f"{n} {escape(s)}" for s, n in sorted(counts.items())) or "nothing planned yet"
    return (
        f'<section class="persona" id="{escape(card.slug)}"><h2>{title}</h2>{problem}'
        '<table class="facts">'
        f"<tr><td>approval</td><td>{escape(card.approval or '?')}</td></tr>"
        f"<tr><td>dataset</td><td>{escape(card.dataset)}{sheet}</td></tr>"
        f"<tr><td>active LoRA</td><td>{escape(card.lora)}</td></tr>"
        f"<tr><td>next {len(overview.days)} days</td><td>{summary}</td></tr>"
        f"<tr><td>accounts</td><td>{_accounts(card.accounts, overview.today)}</td></tr>"
        f"<tr><td>last failure</td><td>{failure}</td></tr>"
        "</table>"
        f"{week_grid(card, overview, base)}</section>"
    )


def render(overview: Overview, base: str = "") -> str:
    """The whole page. `base` is the server's path prefix (empty at the root)."""
    invalid = ""
    if overview.invalid_folders:
        items = "".join(
            f"<li><code>{escape(f.name)}</code>: {escape(f.problem)}</li>" for f in overview.invalid_folders
        )
        invalid = (
            '<div class="invalid" id="invalid-folders"><strong>Ignored folders in uploads/</strong>'
            f"<ul>{items}</ul></div>"
        )
    personas = "".join(_persona(card, overview, base) for card in overview.personas) or (
        "<p>No persona yet: drop a folder of photos into <code>uploads/&lt;name&gt;/</code>.</p>"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Studio: influencer pipeline</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head><body>"
        f"<h1>Studio</h1><p class='meta'>{overview.days[0]} to {overview.days[-1]} (UTC). "
        f"<a href='{base}/'>Dagster UI</a> &middot; review a day: <a href='{base}{REVIEW_JOB}'>review_posts</a> "
        "or <code>influencer-pipeline posts approve --persona NAME --day YYYY-MM-DD</code></p>"
        f"{invalid}{personas}</body></html>"
    )
