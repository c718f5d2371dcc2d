"""`rehome`: a base URL replaces scheme and authority, and the real host stays in the path."""

from __future__ import annotations

from influencer_pipeline.endpoints import GRAPH_API_VERSION, rehome


def test_rehome_keeps_the_real_host_path_and_query() -> None:
    url = f"https://graph.instagram.com/{GRAPH_API_VERSION}/me?fields=user_id"
    assert rehome(url, None) == url
    assert rehome(url, "") == url
    assert rehome(url, "http://127.0.0.1:8080/") == (
        f"http://127.0.0.1:8080/graph.instagram.com/{GRAPH_API_VERSION}/me?fields=user_id"
    )
    assert rehome("https://rupload.facebook.com/ig-api-upload/v24.0/1", "https://proxy.example/meta") == (
        "https://proxy.example/meta/rupload.facebook.com/ig-api-upload/v24.0/1"
    )
