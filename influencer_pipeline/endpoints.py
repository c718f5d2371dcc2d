"""Where the platforms' APIs live, and how a stand-in or an egress proxy takes their place.

One Meta Graph API version serves linking (`accounts/providers.py`) and publishing (`publishing/instagram.py`,
`publishing/facebook.py`), so a token is never obtained under one version and used under another. Versions and
their end-of-life dates: https://developers.facebook.com/docs/graph-api/changelog/versions

`rehome` is the one way a client is pointed somewhere else (`<PLATFORM>_API_BASE_URL`,
`<PLATFORM>_OAUTH_BASE_URL`): the base URL replaces scheme and authority, and the real host becomes the first path
segment, `https://graph.instagram.com/v24.0/me` -> `http://127.0.0.1:8080/graph.instagram.com/v24.0/me`. So the
client is built exactly as in production, and whoever answers still sees which real host the call was meant for
(the test stand-ins refuse a call made to the wrong one; a path-routing proxy forwards it there).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

GRAPH_API_VERSION = "v24.0"

# Instagram API with Instagram Login: "All endpoints can be accessed via the graph.instagram.com host."
# https://developers.facebook.com/docs/instagram-platform/instagram-api-with-instagram-login/content-publishing
GRAPH_INSTAGRAM = "https://graph.instagram.com"
# Instagram API with Facebook Login, and Facebook Pages: graph.facebook.com.
# https://developers.facebook.com/docs/instagram-platform/instagram-api-with-facebook-login/content-publishing
GRAPH_FACEBOOK = "https://graph.facebook.com"
# Resumable Instagram video upload, "available only for apps that have implemented Facebook Login for Business".
# https://developers.facebook.com/docs/instagram-platform/content-publishing/resumable-uploads
RUPLOAD_FACEBOOK = "https://rupload.facebook.com"
# Page video uploads: "Videos must be published to graph-video.facebook.com instead of the regular Graph API URL".
# https://developers.facebook.com/docs/graph-api/video-uploads
GRAPH_VIDEO_FACEBOOK = "https://graph-video.facebook.com"


def rehome(url: str, base_url: str | None) -> str:
    """`url` unchanged without a base; else sent to `base_url` with the real host kept as the first path segment."""
    if not base_url:
        return url
    base, target = urlsplit(base_url.rstrip("/")), urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, f"{base.path}/{target.netloc}{target.path}", target.query, ""))
