"""The OAuth client, through `Accounts.link`, end to end against the stand-in authorization servers: the authorize
URL, the code exchange, Meta's long-lived exchange, the scope check, who the account is, and the configuration.

The "browser" is requests: it opens the authorize URL (the stand-in consents at once) and follows the redirect to
the loopback listener, or, for Meta's public HTTPS callback, stops at the redirect and "pastes" its address.
Assertions read the stand-in's own record of what it was asked.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import requests
from cryptography.fernet import Fernet

from influencer_pipeline.accounts.errors import InvalidGrant, OAuthError
from influencer_pipeline.accounts.pkce import code_challenge
from influencer_pipeline.accounts.providers import BUILTIN, GRAPH_API_VERSION, LOGINS, PLATFORMS, provider_for
from influencer_pipeline.accounts.service import Accounts
from influencer_pipeline.accounts.state import PendingStates
from influencer_pipeline.accounts.store import AccountStore, Secret, TokenCipher
from influencer_pipeline.errors import InputError
from tests.accounts.linking import PKCE_PLATFORMS, link
from tests.accounts.oauth_standin import (
    FB_PAGES,
    IG_USER_ID,
    TIKTOK_OPEN_ID,
    YT_CHANNEL,
    Browser,
    FakeClock,
    OAuthStandin,
    Reply,
    standin_accounts,
)

# --- linking --------------------------------------------------------------------------------------------------


def test_link_end_to_end(accounts: Accounts, standin: OAuthStandin, store: AccountStore) -> None:
    account = link(accounts, standin.platform)

    expected_id = {"instagram": IG_USER_ID, "facebook": FB_PAGES[0][0], "youtube": YT_CHANNEL, "tiktok": TIKTOK_OPEN_ID}
    assert account.account_id == expected_id[standin.platform]
    assert account.display_name
    assert set(BUILTIN[standin.platform].scopes) <= set(account.scopes)
    tokens = store.read_tokens(account)
    assert standin.valid(tokens.access.reveal())
    stored_kind = standin.tokens[tokens.access.reveal()].kind
    assert (
        stored_kind
        == {"instagram": "long", "facebook": "page", "youtube": "access", "tiktok": "access"}[standin.platform]
    )
    if standin.platform in ("instagram", "facebook"):
        assert standin.count("exchange") == 1  # Meta's short-lived token went through the long-lived exchange
    assert account.expires_at == standin.tokens[tokens.access.reveal()].expires_at  # None for a Page token
    if standin.platform in ("youtube", "tiktok"):
        assert tokens.refresh is not None and standin.valid(tokens.refresh.reveal())
    assert [c.endpoint for c in standin.calls].count("token") == 1


def test_authorize_url_carries_pkce_state_and_platform_parameters(accounts: Accounts, standin: OAuthStandin) -> None:
    link(accounts, standin.platform)
    query = standin.calls[0].params
    provider = BUILTIN[standin.platform]
    assert len(query["state"]) >= 43  # 256 bits, url-safe base64
    assert query["scope"] == provider.scope_separator.join(provider.scopes)
    if standin.platform in PKCE_PLATFORMS:
        assert query["code_challenge_method"] == "S256"
        verifier = next(c for c in standin.calls if c.endpoint == "token").params["code_verifier"]
        assert query["code_challenge"] == code_challenge(verifier, provider.pkce or "base64url")
    else:
        assert "code_challenge" not in query
    if standin.platform == "youtube":
        assert (query["access_type"], query["prompt"]) == ("offline", "consent")
    if standin.platform == "tiktok":
        assert "client_key" in query and "client_id" not in query
        assert urlsplit(query["redirect_uri"]).hostname == "127.0.0.1"


def test_replayed_code_is_refused(accounts: Accounts, standin: OAuthStandin) -> None:
    link(accounts, standin.platform)
    token_call = next(c for c in standin.calls if c.endpoint == "token")
    client = accounts.client(standin.platform)
    pending = client.begin("ava", token_call.params["redirect_uri"], PendingStates(standin.clock))
    if "code_verifier" in token_call.params:  # the same verifier, so only the code's reuse can be the reason
        pending = replace(pending, verifier=Secret(token_call.params["code_verifier"]))

    with pytest.raises(InvalidGrant, match="refused"):
        client.exchange_code(token_call.params["code"], pending)
    assert standin.count("token") == 2


def test_expired_code_is_refused(accounts: Accounts, standin: OAuthStandin) -> None:
    class ExpiringBrowser(Browser):
        def _visit(self, url: str) -> None:
            response = requests.get(url, allow_redirects=False, timeout=10)
            standin.expire_codes()  # the person took too long between consent and the exchange
            self.location = response.headers["Location"]
            if self.follow:
                requests.get(self.location, timeout=10)

    with pytest.raises(InvalidGrant, match="expired"):
        link(accounts, standin.platform, ExpiringBrowser())
    assert accounts.store.list() == []


def test_declined_consent_is_reported(accounts: Accounts, standin: OAuthStandin) -> None:
    standin.deny = True
    with pytest.raises(OAuthError, match="not completed: access_denied"):
        link(accounts, standin.platform)
    assert standin.count("token") == 0


def test_partial_grant_fails_the_link(accounts: Accounts, standin: OAuthStandin) -> None:
    standin.granted = BUILTIN[standin.platform].scopes[:1]
    with pytest.raises(OAuthError, match="did not grant"):
        link(accounts, standin.platform)
    assert accounts.store.list() == []


def test_facebook_page_choice_when_several(store: AccountStore, clock: FakeClock, monkeypatch) -> None:
    pages = (("111", "Ava Travel"), ("222", "Ava Studio"))
    monkeypatch.setattr("tests.accounts.oauth_standin.FB_PAGES", pages)
    with OAuthStandin("facebook", clock) as server:
        accounts = standin_accounts(store, [server], clock)
        with pytest.raises(InputError, match=r"several Pages.*Ava Travel.*--page"):
            link(accounts, "facebook")
        assert link(accounts, "facebook", page="ava studio").account_id == "222"


def test_base_url_override_and_missing_app_credentials(tmp_path, monkeypatch) -> None:
    environ = {"YOUTUBE_OAUTH_BASE_URL": "http://127.0.0.1:9", "TIKTOK_PKCE_ENCODING": "base64url"}
    youtube = provider_for("youtube", environ)
    # the real host stays in the path, so the stand-in or proxy still sees which host the call was meant for
    assert youtube.token_url == "http://127.0.0.1:9/oauth2.googleapis.com/token"
    assert youtube.revoke_url == "http://127.0.0.1:9/oauth2.googleapis.com/revoke"
    assert provider_for("tiktok", environ).pkce == "base64url"
    store = AccountStore(f"sqlite:///{tmp_path / 'a.db'}", TokenCipher([Fernet.generate_key().decode()]))
    monkeypatch.delenv("GOOGLE_CLIENT_ID", raising=False)
    with pytest.raises(InputError, match=r"GOOGLE_CLIENT_ID / GOOGLE_CLIENT_SECRET.*Desktop app"):
        Accounts(store).link("ava", "youtube", open_browser=None, say=lambda line: None, timeout_s=1)


# --- Instagram through Facebook Login, hosts and the Graph version --------------------------------------------------


def test_instagram_can_be_linked_through_facebook_login(store: AccountStore, clock: FakeClock) -> None:
    """The Page's connected Instagram account is linked; the Page token is stored; the account remembers the
    login, so publishing uses graph.facebook.com for it."""
    with OAuthStandin("facebook", clock) as fb:
        accounts = standin_accounts(store, [fb], clock)
        account = link(accounts, "instagram", login="facebook")
        pages = [c for c in fb.calls if c.endpoint == "pages"]

    assert (account.platform, account.login, account.account_id) == ("instagram", "facebook", IG_USER_ID)
    assert account.display_name == "ava.virtual"
    assert set(LOGINS[("instagram", "facebook")].scopes) <= set(account.scopes)
    assert "instagram_content_publish" in fb.calls[0].params["scope"]
    assert "instagram_business_account" in pages[0].params["fields"]
    tokens = store.read_tokens(account)
    assert fb.tokens[tokens.access.reveal()].kind == "page" and account.expires_at is None
    assert tokens.refresh is not None and fb.tokens[tokens.refresh.reveal()].kind == "long"  # revokes the grant
    assert accounts.fresh_token("ava", "instagram") == tokens.access.reveal()


def test_a_page_without_a_connected_instagram_account_fails_the_link_clearly(
    store: AccountStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OAuthStandin("facebook", clock) as fb:
        monkeypatch.setattr(fb, "_fb_pages", lambda params, headers: Reply(200, {"data": [{"id": "1", "name": "P"}]}))
        with pytest.raises(OAuthError, match="Instagram professional account connected"):
            link(standin_accounts(store, [fb], clock), "instagram", login="facebook")
    assert store.list() == []


def test_an_unknown_login_is_an_input_error(accounts: Accounts, standin: OAuthStandin) -> None:
    with pytest.raises(InputError, match="--login"):
        accounts.link("ava", standin.platform, login="myspace", open_browser=None, say=lambda line: None)


def test_every_meta_endpoint_uses_the_one_graph_version() -> None:
    for (platform, login), provider in LOGINS.items():
        graph_urls = [v for k, v in vars(provider).items() if k.endswith("_url") and "graph." in v]
        for url in graph_urls:
            version = urlsplit(url).path.split("/")[1]
            assert version == GRAPH_API_VERSION or not version.startswith("v"), (platform, login, url)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_oauth_stand_in_refuses_another_host_or_graph_version(platform: str, clock: FakeClock) -> None:
    """The provider is re-homed with its real host kept in the path; drop or change that and nothing answers."""
    with OAuthStandin(platform, clock) as server:
        provider = BUILTIN[platform].with_base_url(server.base_url)
        _, _, path = urlsplit(provider.token_url).path.removeprefix("/").partition("/")
        method = provider.token_method
        wrong_host = requests.request(method, f"{server.base_url}/example.com/{path}", timeout=5)
        no_host = requests.request(method, f"{server.base_url}/{path}", timeout=5)
        answers = [wrong_host.status_code, no_host.status_code]
        if GRAPH_API_VERSION in provider.token_url:
            old = provider.token_url.replace(GRAPH_API_VERSION, "v23.0")
            answer = requests.request(method, old, timeout=5)
            assert answer.json()["error"]["code"] == 2635
            answers.append(answer.status_code)
    assert all(code in (400, 404) for code in answers), answers
    assert server.count("token") == 0 and server.count("refused") == len(answers)
