"""`influencer-pipeline accounts ...`: link, list, unlink, refresh and rotate-keys.

Output never contains a token: `list` prints only the clear-text columns, and errors print the scrubbed
messages the accounts modules raise, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import webbrowser
from collections.abc import Callable
from datetime import datetime

from influencer_pipeline.accounts.clock import utcnow
from influencer_pipeline.accounts.errors import OAuthError
from influencer_pipeline.accounts.providers import BUILTIN, LOGINS, PLATFORMS
from influencer_pipeline.accounts.service import Accounts, account_health
from influencer_pipeline.accounts.store import Account, AccountNotFound, AccountStore, TokenIntegrityError
from influencer_pipeline.errors import InputError
from influencer_pipeline.personas import validate_slug

Handler = Callable[[argparse.Namespace], int]
_FAILURES = (InputError, OAuthError, AccountNotFound, TokenIntegrityError)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `accounts` and its subcommands to the top-level parser."""
    accounts = commands.add_parser("accounts", help="link, list, refresh and unlink social accounts")
    actions = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")

    link = actions.add_parser("link", help="sign in to a platform and store the account's tokens (encrypted)")
    _platform_and_persona(link)
    link.add_argument("--callback-url", help="public HTTPS redirect URI registered with the app (required for Meta)")
    link.add_argument("--listen-port", type=int, help="local port a tunnel forwards the public callback to")
    link.add_argument("--page", help="Facebook: the Page to post as (name or id) when the account manages several")
    link.add_argument(
        "--login",
        choices=sorted({login for _, login in LOGINS}),
        help="instagram only: 'instagram' (Instagram Login, graph.instagram.com; the default) or 'facebook' "
        "(Facebook Login through the Page the Instagram account is connected to, graph.facebook.com)",
    )
    link.add_argument("--no-browser", action="store_true", help="print the sign-in address instead of opening it")
    link.set_defaults(run=_guarded(_link))

    listing = actions.add_parser("list", help="linked accounts: platform, persona, account, scopes, expiry, health")
    listing.set_defaults(run=_guarded(_list))

    unlink = actions.add_parser("unlink", help="revoke the grant at the platform, then delete the account here")
    _platform_and_persona(unlink)
    unlink.set_defaults(run=_guarded(_unlink))

    refresh = actions.add_parser("refresh", help="refresh every token inside its refresh margin (run it from cron)")
    refresh.set_defaults(run=_guarded(_refresh))

    rotate = actions.add_parser("rotate-keys", help="re-encrypt every token under the first INFLUENCER_TOKEN_KEYS key")
    rotate.set_defaults(run=_guarded(_rotate))


def _platform_and_persona(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("platform", choices=PLATFORMS)
    parser.add_argument("--persona", required=True, type=_persona)


def _persona(value: str) -> str:
    try:
        return validate_slug(value, where="--persona")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _guarded(handler: Handler) -> Handler:
    """Turn the errors a person can act on into one line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except _FAILURES as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _link(args: argparse.Namespace) -> int:
    account = Accounts.from_env().link(
        args.persona,
        args.platform,
        callback_url=args.callback_url,
        listen_port=args.listen_port,
        page=args.page,
        login=args.login,
        open_browser=None if args.no_browser else webbrowser.open,
    )
    print(
        f"linked {_platform(account)} account {account.display_name!r} ({account.account_id}) to persona "
        f"{account.persona}; scopes: {_scopes(account)}; token valid until {_expiry(account.expires_at)}"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    accounts = AccountStore.from_env().list()
    if not accounts:
        print("no accounts linked; link one with: influencer-pipeline accounts link PLATFORM --persona PERSONA")
        return 0
    now = utcnow()
    rows = [("PLATFORM", "PERSONA", "ACCOUNT", "SCOPES", "EXPIRES", "HEALTH")]
    rows += [
        (
            _platform(account),
            account.persona,
            f"{account.display_name} ({account.account_id})",
            _scopes(account),
            _expiry(account.expires_at),
            account_health(account, now),
        )
        for account in accounts
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _unlink(args: argparse.Namespace) -> int:
    note = Accounts.from_env().unlink(args.persona, args.platform)
    print(f"unlinked {args.platform} from persona {args.persona}: {note}")
    return 0


def _refresh(args: argparse.Namespace) -> int:
    outcomes = Accounts.from_env().refresh_due()
    for account, outcome in outcomes:
        print(f"{account.platform}/{account.persona}: {outcome} (valid until {_expiry(account.expires_at)})")
    return 1 if any(outcome.startswith("failed") for _, outcome in outcomes) else 0


def _rotate(args: argparse.Namespace) -> int:
    count = AccountStore.from_env().rotate_keys()
    print(f"re-encrypted the tokens of {count} account(s) with the first key; older keys can now be removed")
    return 0


def _platform(account: Account) -> str:
    """The platform, and the login when it is not the platform's default (Instagram through Facebook Login)."""
    if account.login == BUILTIN[account.platform].login_type:
        return account.platform
    return f"{account.platform} ({account.login} login)"


def _scopes(account: Account) -> str:
    """Scopes, with Google's URL prefixes dropped so the column stays readable."""
    return ",".join(scope.rsplit("/", 1)[-1] for scope in account.scopes)


def _expiry(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "never"
