"""`influencer-pipeline accounts ...`: output has no secret; errors are one line with the fix."""

from __future__ import annotations

import os
import webbrowser
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from influencer_pipeline.accounts.store import KEYS_ENV, AccountStore, Identity, Secret, TokenSet, accounts_table
from influencer_pipeline.cli import main
from tests.accounts.oauth_standin import CLIENT_ID, CLIENT_SECRET, YT_CHANNEL, Browser, OAuthStandin

ACCESS = "ya29.cli-access-token-4f0c2b9e77"
REFRESH = "1//cli-refresh-token-a8d3e1f640"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'accounts.db'}"
    monkeypatch.setenv("INFLUENCER_ACCOUNTS_DB", url)
    monkeypatch.setenv(KEYS_ENV, Fernet.generate_key().decode())
    return url


@pytest.fixture
def youtube(monkeypatch: pytest.MonkeyPatch, env: str) -> Iterator[OAuthStandin]:
    with OAuthStandin("youtube", clock=lambda: datetime.now(UTC)) as server:
        monkeypatch.setenv("YOUTUBE_OAUTH_BASE_URL", server.base_url)
        monkeypatch.setenv("GOOGLE_CLIENT_ID", CLIENT_ID)
        monkeypatch.setenv("GOOGLE_CLIENT_SECRET", CLIENT_SECRET)
        yield server


def seed(url: str) -> AccountStore:
    store = AccountStore(url)
    identity = Identity("UC1", "Ava Virtual", ("https://www.googleapis.com/auth/youtube.upload",))
    expires = datetime.now(UTC) + timedelta(hours=1)
    store.save_link("ava", "youtube", identity, TokenSet(Secret(ACCESS), Secret(REFRESH), expires, None), expires)
    return store


def test_list_shows_the_clear_columns_and_no_secret(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = seed(env)
    assert main(["accounts", "list"]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()
    assert header.split() == ["PLATFORM", "PERSONA", "ACCOUNT", "SCOPES", "EXPIRES", "HEALTH"]
    assert row.split()[:2] == ["youtube", "ava"] and "Ava Virtual (UC1)" in row and "youtube.upload" in row
    assert row.endswith("ok") and "UTC" in row
    with store.engine.connect() as conn:
        ciphertexts = [v for r in conn.execute(select(accounts_table)) for v in (r.access_token, r.refresh_token)]
    for secret in (ACCESS, REFRESH, *ciphertexts):
        assert secret not in out


def test_list_needs_no_key_and_says_when_empty(env: str, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(KEYS_ENV)
    assert main(["accounts", "list"]) == 0
    assert "no accounts linked" in capsys.readouterr().out


def test_link_refresh_list_unlink(youtube: OAuthStandin, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    browser = Browser()
    monkeypatch.setattr(webbrowser, "open", browser.open)

    assert main(["accounts", "link", "youtube", "--persona", "ava"]) == 0
    out = capsys.readouterr().out
    assert (
        "/accounts.google.com/o/oauth2/v2/auth?" in out
        and f"linked youtube account 'Ava Virtual' ({YT_CHANNEL})" in out
    )

    assert main(["accounts", "refresh"]) == 0
    assert "youtube/ava: fresh" in capsys.readouterr().out
    assert main(["accounts", "list"]) == 0
    listing = capsys.readouterr().out

    assert main(["accounts", "unlink", "youtube", "--persona", "ava"]) == 0
    assert "revoked at youtube" in capsys.readouterr().out
    assert youtube.count("revoke") == 1
    for secret in youtube.secrets():
        assert secret not in out + listing


def test_refresh_exits_1_when_an_account_needs_reconnect(youtube: OAuthStandin, env: str, capsys) -> None:
    seed(env)  # tokens the stand-in never issued: the refresh is refused
    with AccountStore(env).engine.begin() as conn:
        conn.execute(accounts_table.update().values(expires_at=datetime(2026, 1, 1)))
    assert main(["accounts", "refresh"]) == 1
    assert "failed: the youtube account of persona 'ava' must be linked again" in capsys.readouterr().out
    main(["accounts", "list"])
    assert capsys.readouterr().out.splitlines()[1].endswith("needs reconnect")


def test_missing_key_is_one_line_with_the_fix(env: str, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    seed(env)
    monkeypatch.delenv(KEYS_ENV)
    assert main(["accounts", "unlink", "youtube", "--persona", "ava"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {KEYS_ENV}: is not set") and "Fernet.generate_key()" in err
    assert "Traceback" not in err


def test_rotate_keys(env: str, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    seed(env)
    monkeypatch.setenv(KEYS_ENV, f"{Fernet.generate_key().decode()},{os.environ[KEYS_ENV]}")
    assert main(["accounts", "rotate-keys"]) == 0
    assert "re-encrypted the tokens of 1 account(s)" in capsys.readouterr().out
    monkeypatch.setenv(KEYS_ENV, os.environ[KEYS_ENV].split(",")[0])
    store = AccountStore(env)
    assert store.read_tokens(store.get("ava", "youtube")).access.reveal() == ACCESS


def test_meta_link_without_callback_explains_the_tunnel(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["accounts", "link", "instagram", "--persona", "ava", "--no-browser"]) == 1
    err = capsys.readouterr().err
    assert "--callback-url" in err and "tunnel" in err and "Traceback" not in err


def test_bad_persona_is_a_usage_error(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["accounts", "unlink", "youtube", "--persona", "Ava Rossi"])
    assert caught.value.code == 2
    assert "not a valid persona key" in capsys.readouterr().err


def test_list_names_the_login_when_it_is_not_the_platforms_default(env: str, capsys) -> None:
    store = seed(env)
    identity = Identity("17841400000000001", "ava.virtual", ("instagram_basic",))
    store.save_link(
        "ava", "instagram", identity, TokenSet(Secret(ACCESS), None, None, None), datetime.now(UTC), "facebook"
    )
    assert main(["accounts", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert rows[0].startswith("instagram (facebook login)  ava") and rows[1].startswith("youtube ")


def test_link_refuses_a_login_the_platform_does_not_have(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["accounts", "link", "youtube", "--persona", "ava", "--login", "facebook"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --login: youtube cannot be linked with 'facebook'") and "google" in err
