"""Linked accounts in one SQL table, with their tokens encrypted at rest.

Non-secret facts (persona, platform, account id, scopes, expiry, health) stay in clear so schedulers can query
them; the access and refresh tokens are Fernet ciphertexts under keys that live outside the database, in
`INFLUENCER_TOKEN_KEYS` (comma-separated; the first key encrypts, every key decrypts, so a new key can be put in
front and `rotate_keys` re-encrypts every row under it). Fernet has no associated data, so each ciphertext
carries the row it belongs to (platform, persona, account, slot) and decryption refuses a ciphertext copied into
another row or slot.

`login` records how the account was linked (Instagram: Instagram Login or Facebook Login), because that decides
which API host its tokens work on; rows from before the column existed read as the platform's default login.

The refresh lease (`refresh_owner`, `refresh_lease_until`) is how processes take turns refreshing one account:
see `try_lease`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    create_engine,
    delete,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, RowMapping, make_url
from sqlalchemy.exc import DBAPIError

from influencer_pipeline.accounts.providers import default_login
from influencer_pipeline.errors import InputError
from influencer_pipeline.redaction import Secret  # the project's one secret holder; re-exported

KEYS_ENV = "INFLUENCER_TOKEN_KEYS"
DB_ENV = "INFLUENCER_ACCOUNTS_DB"
GENERATE_KEY = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'

HEALTH_OK = "ok"
HEALTH_RECONNECT = "needs_reconnect"


class TokenKeyError(InputError):
    """The token keys are missing, malformed, or not the ones the stored tokens were encrypted with."""


class TokenIntegrityError(RuntimeError):
    """A ciphertext decrypted fine but belongs to another row or slot: the table was tampered with."""


class AccountNotFound(LookupError):
    """No account is linked for this persona and platform; the message says the command that links one."""

    def __init__(self, persona: str, platform: str) -> None:
        super().__init__(
            f"no {platform} account is linked for persona {persona!r}. "
            f"Fix: influencer-pipeline accounts link {platform} --persona {persona}"
        )


class TokenCipher:
    """MultiFernet over the configured keys: the first encrypts, all decrypt, `rotate` re-encrypts under the first."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise TokenKeyError(
                KEYS_ENV,
                "is not set, and linked accounts' tokens are encrypted with it",
                f"generate a key with `{GENERATE_KEY}`, then `export {KEYS_ENV}=<key>`; keep it outside the "
                "database (losing it means linking every account again)",
            )
        self._fernet = MultiFernet([_fernet(key, position) for position, key in enumerate(keys, start=1)])
        self.key_count = len(keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> TokenCipher:
        return cls([key.strip() for key in environ.get(KEYS_ENV, "").split(",") if key.strip()])

    def __repr__(self) -> str:
        return f"TokenCipher(keys={self.key_count})"

    def encrypt(self, token: str, binding: str) -> str:
        return self._fernet.encrypt(json.dumps({"row": binding, "token": token}).encode()).decode()

    def decrypt(self, ciphertext: str, binding: str) -> Secret:
        try:
            sealed = json.loads(self._fernet.decrypt(ciphertext.encode()))
        except InvalidToken:
            raise _undecryptable(binding) from None
        if sealed.get("row") != binding:
            raise TokenIntegrityError(f"the token stored for {binding} belongs to another account or slot")
        return Secret(sealed["token"])

    def rotate(self, ciphertext: str, binding: str) -> str:
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise _undecryptable(binding) from None


def _fernet(key: str, position: int) -> Fernet:
    try:
        return Fernet(key)
    except ValueError:
        raise TokenKeyError(
            KEYS_ENV,
            f"key #{position} is not a Fernet key (32 url-safe base64-encoded bytes)",
            f"generate one with `{GENERATE_KEY}`",
        ) from None


def _undecryptable(binding: str) -> TokenKeyError:
    return TokenKeyError(
        KEYS_ENV,
        f"no key in it decrypts the token stored for {binding}",
        "add the key the tokens were encrypted with (after the new one), or unlink and link the account again",
    )


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the column: the same on SQLite and PostgreSQL, and comparable."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = MetaData()
accounts_table = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("persona", String(64), nullable=False),
    Column("platform", String(32), nullable=False),
    Column("account_id", String(128), nullable=False),
    Column("display_name", String(256), nullable=False),
    Column("login", String(32), nullable=True),  # NULL: the platform's default login (rows linked before it existed)
    Column("scopes", Text, nullable=False),  # space-separated
    Column("expires_at", UTCDateTime, nullable=True),  # access token; NULL = does not expire
    Column("refresh_expires_at", UTCDateTime, nullable=True),
    Column("health", String(32), nullable=False),
    Column("access_token", Text, nullable=False),  # Fernet ciphertext
    Column("refresh_token", Text, nullable=True),  # Fernet ciphertext
    Column("linked_at", UTCDateTime, nullable=False),
    Column("refreshed_at", UTCDateTime, nullable=True),
    Column("refresh_owner", String(64), nullable=True),
    Column("refresh_lease_until", UTCDateTime, nullable=True),
    UniqueConstraint("persona", "platform", name="uq_accounts_persona_platform"),
)


@dataclass(frozen=True)
class Account:
    """One linked account, without its tokens (read them with `AccountStore.read_tokens`)."""

    persona: str
    platform: str
    account_id: str
    display_name: str
    scopes: tuple[str, ...]
    expires_at: datetime | None
    refresh_expires_at: datetime | None
    health: str
    linked_at: datetime
    refreshed_at: datetime | None
    login: str = ""  # how it was linked (`providers.LOGINS`): decides the API host its tokens work on

    @property
    def label(self) -> str:
        return f"{self.platform}/{self.persona}"


@dataclass(frozen=True)
class Tokens:
    """Decrypted tokens of one account; each prints as `Secret('***')`."""

    access: Secret
    refresh: Secret | None


@dataclass(frozen=True)
class Identity:
    """Who a token belongs to on the platform, and what it was granted."""

    account_id: str
    display_name: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class TokenSet:
    """Tokens as a link or a refresh produced them, lifetimes made absolute; `scopes` is None when unreported."""

    access: Secret
    refresh: Secret | None
    expires_at: datetime | None
    refresh_expires_at: datetime | None
    scopes: tuple[str, ...] | None = None


def default_url(environ: Mapping[str, str] = os.environ) -> str:
    """`INFLUENCER_ACCOUNTS_DB`, else a SQLite file next to the Dagster instance (or in the working directory)."""
    if environ.get(DB_ENV):
        return environ[DB_ENV]
    return f"sqlite:///{Path(environ.get('DAGSTER_HOME') or '.').resolve() / 'accounts.db'}"


class AccountStore:
    """The `accounts` table. The cipher is loaded on first use, so listing accounts works without the key."""

    def __init__(self, url: str, cipher: TokenCipher | None = None) -> None:
        self.url = url
        self.engine: Engine = create_engine(url)
        self._cipher = cipher
        _prepare_sqlite_file(url)
        metadata.create_all(self.engine)
        _add_login_column(self.engine)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> AccountStore:
        return cls(default_url(environ))

    def __repr__(self) -> str:
        return f"AccountStore(url={self.engine.url.render_as_string(hide_password=True)!r})"

    @property
    def cipher(self) -> TokenCipher:
        if self._cipher is None:
            self._cipher = TokenCipher.from_env()
        return self._cipher

    def list(self) -> list[Account]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(accounts_table).order_by(accounts_table.c.persona, accounts_table.c.platform))
            return [_account(row) for row in rows.mappings()]

    def get(self, persona: str, platform: str) -> Account:
        with self.engine.connect() as conn:
            return _account(_row(conn, persona, platform))

    def read_tokens(self, account: Account) -> Tokens:
        with self.engine.connect() as conn:
            row = _row(conn, account.persona, account.platform)
        binding = _binding(row)
        refresh = row["refresh_token"]
        return Tokens(
            access=self.cipher.decrypt(row["access_token"], binding + ":access"),
            refresh=self.cipher.decrypt(refresh, binding + ":refresh") if refresh else None,
        )

    def save_link(
        self,
        persona: str,
        platform: str,
        identity: Identity,
        tokens: TokenSet,
        now: datetime,
        login: str | None = None,
    ) -> Account:
        """Insert or replace the account, recording how it was linked (`login`, default: the platform's own).
        A relink of the same account that returns no refresh token keeps the stored one (writing an empty one is
        the bug that sends other schedulers into reconnect loops)."""
        account_id = identity.account_id
        binding = f"{platform}:{persona}:{account_id}"
        values: dict[str, Any] = {
            "account_id": account_id,
            "display_name": identity.display_name,
            "login": login or default_login(platform),
            "scopes": " ".join(identity.scopes),
            "expires_at": tokens.expires_at,
            "health": HEALTH_OK,
            "access_token": self.cipher.encrypt(tokens.access.reveal(), binding + ":access"),
            "linked_at": now,
            "refreshed_at": None,
            "refresh_owner": None,
            "refresh_lease_until": None,
        }
        with self.engine.begin() as conn:
            existing = conn.execute(_where(select(accounts_table), persona, platform)).mappings().first()
            keep_refresh = (
                tokens.refresh is None
                and existing is not None
                and existing["account_id"] == account_id
                and (existing["login"] or default_login(platform)) == values["login"]
            )
            if keep_refresh:
                values["refresh_token"] = existing["refresh_token"]
                values["refresh_expires_at"] = existing["refresh_expires_at"]
            else:
                values.update(self._sealed_refresh(tokens, binding))
            if existing is None:
                conn.execute(insert(accounts_table).values(persona=persona, platform=platform, **values))
            else:
                conn.execute(_where(update(accounts_table), persona, platform).values(**values))
        return self.get(persona, platform)

    def save_refresh(self, account: Account, tokens: TokenSet, owner: str, now: datetime) -> None:
        """Write the refreshed pair and clear our lease in one transaction, before anyone uses the new token.
        A missing refresh token in `tokens` means the platform kept the old one (Google), so it is not touched."""
        binding = f"{account.platform}:{account.persona}:{account.account_id}"
        values: dict[str, Any] = {
            "access_token": self.cipher.encrypt(tokens.access.reveal(), binding + ":access"),
            "expires_at": tokens.expires_at,
            "refreshed_at": now,
            "health": HEALTH_OK,
        }
        if tokens.refresh is not None:
            values.update(self._sealed_refresh(tokens, binding))
        with self.engine.begin() as conn:
            conn.execute(_where(update(accounts_table), account.persona, account.platform).values(**values))
            _clear_lease(conn, account, owner)

    def set_health(self, account: Account, health: str) -> bool:
        """Set the health flag; True when it changed, so a caller can notify once per transition."""
        with self.engine.begin() as conn:
            result = conn.execute(
                _where(update(accounts_table), account.persona, account.platform)
                .where(accounts_table.c.health != health)
                .values(health=health)
            )
            return result.rowcount == 1

    def delete(self, persona: str, platform: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(_where(delete(accounts_table), persona, platform))

    def try_lease(self, account: Account, owner: str, now: datetime, until: datetime) -> bool:
        """Claim the right to refresh this account until `until`, if nobody holds an unexpired claim and nobody
        refreshed it since `account` was read.

        One conditional UPDATE (compare-and-set) decides between processes on SQLite and PostgreSQL alike, and
        no database lock is held during the HTTP refresh. A crashed refresher's claim simply expires. The
        `refreshed_at` condition stops a caller holding a stale read from refreshing again right after another
        process finished and released its claim."""
        free = or_(accounts_table.c.refresh_lease_until.is_(None), accounts_table.c.refresh_lease_until < now)
        column = accounts_table.c.refreshed_at
        unchanged = column.is_(None) if account.refreshed_at is None else column == account.refreshed_at
        with self.engine.begin() as conn:
            result = conn.execute(
                _where(update(accounts_table), account.persona, account.platform)
                .where(free, unchanged)
                .values(refresh_owner=owner, refresh_lease_until=until)
            )
            return result.rowcount == 1

    def release_lease(self, account: Account, owner: str) -> None:
        with self.engine.begin() as conn:
            _clear_lease(conn, account, owner)

    def rotate_keys(self) -> int:
        """Re-encrypt every token under the first key, in one transaction: all rows or none. Returns the count."""
        with self.engine.begin() as conn:
            rows = list(conn.execute(select(accounts_table)).mappings())
            for row in rows:
                binding = _binding(row)
                values = {"access_token": self.cipher.rotate(row["access_token"], binding + ":access")}
                if row["refresh_token"]:
                    values["refresh_token"] = self.cipher.rotate(row["refresh_token"], binding + ":refresh")
                conn.execute(update(accounts_table).where(accounts_table.c.id == row["id"]).values(**values))
        return len(rows)

    def _sealed_refresh(self, tokens: TokenSet, binding: str) -> dict[str, Any]:
        sealed = self.cipher.encrypt(tokens.refresh.reveal(), binding + ":refresh") if tokens.refresh else None
        return {"refresh_token": sealed, "refresh_expires_at": tokens.refresh_expires_at}


def _prepare_sqlite_file(url: str) -> None:
    """Create the SQLite file's folder, and the file itself readable by its owner only."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)


def _add_login_column(engine: Engine) -> None:
    """Tables created before `login` existed get the column (NULL reads as the platform's default login)."""

    def has_login() -> bool:
        return "login" in {column["name"] for column in inspect(engine).get_columns("accounts")}

    if has_login():
        return
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE accounts ADD COLUMN login VARCHAR(32)"))
    except DBAPIError:
        if not has_login():  # not another process adding it at the same moment
            raise


def _where(statement: Any, persona: str, platform: str) -> Any:
    return statement.where(and_(accounts_table.c.persona == persona, accounts_table.c.platform == platform))


def _row(conn: Connection, persona: str, platform: str) -> RowMapping:
    row = conn.execute(_where(select(accounts_table), persona, platform)).mappings().first()
    if row is None:
        raise AccountNotFound(persona, platform)
    return row


def _binding(row: RowMapping) -> str:
    return f"{row['platform']}:{row['persona']}:{row['account_id']}"


def _clear_lease(conn: Connection, account: Account, owner: str) -> None:
    conn.execute(
        _where(update(accounts_table), account.persona, account.platform)
        .where(accounts_table.c.refresh_owner == owner)
        .values(refresh_owner=None, refresh_lease_until=None)
    )


def _account(row: RowMapping) -> Account:
    return Account(
        persona=row["persona"],
        platform=row["platform"],
        account_id=row["account_id"],
        display_name=row["display_name"],
        scopes=tuple(row["scopes"].split()),
        expires_at=row["expires_at"],
        refresh_expires_at=row["refresh_expires_at"],
        health=row["health"],
        linked_at=row["linked_at"],
        refreshed_at=row["refreshed_at"],
        login=row["login"] or default_login(row["platform"]),
    )
