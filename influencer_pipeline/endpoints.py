"""How a stand-in or an egress proxy takes the place of a platform's API (the hosts themselves are in
`influencer_pipeline.platforms`, with every other platform fact).

`rehome` is the one way a client is pointed somewhere else (`<PLATFORM>_API_BASE_URL`,
`<PLATFORM>_OAUTH_BASE_URL`): the base URL replaces scheme and authority, and the real host becomes the first path
segment, `https://graph.instagram.com/v24.0/me` -> `http://127.0.0.1:8080/graph.instagram.com/v24.0/me`. So the
client is built exactly as in production, and whoever answers still sees which real host the call was meant for
(the test stand-ins refuse a call made to the wrong one; a path-routing proxy forwards it there).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from influencer_pipeline.platforms import (
    GRAPH_API_VERSION,
    GRAPH_FACEBOOK,
    GRAPH_INSTAGRAM,
    GRAPH_VIDEO_FACEBOOK,
    RUPLOAD_FACEBOOK,
)

__all__ = [
    "GRAPH_API_VERSION",
    "GRAPH_FACEBOOK",
    "GRAPH_INSTAGRAM",
    "GRAPH_VIDEO_FACEBOOK",
    "RUPLOAD_FACEBOOK",
    "rehome",
]


def rehome(url: str, base_url: str | None) -> str:
    """`url` unchanged without a base; else sent to `base_url` with the real host kept as the first path segment."""
    if not base_url:
        return url
    base, target = urlsplit(base_url.rstrip("/")), urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, f"{base.path}/{target.netloc}{target.path}", target.query, ""))
