"""The `influencer-pipeline` command: a dispatcher; each area registers its own subcommands with `register`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from influencer_pipeline.accounts import cli as accounts_cli
from influencer_pipeline.publishing import cli as posts_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="influencer-pipeline", description="A virtual influencer's pipeline.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    accounts_cli.register(commands)
    posts_cli.register(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
