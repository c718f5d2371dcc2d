"""Errors a user can act on.

Every rejection of user input names the file or field, the rule it broke and how to fix it, so that a
person reading the Dagster run log never has to open a stack trace to know what to do.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: carries where, what rule, and the fix, and renders them in one message."""

    def __init__(self, where: str, rule: str, fix: str) -> None:
        self.where = where
        self.rule = rule
        self.fix = fix
        super().__init__(f"{where}: {rule}. Fix: {fix}")


class ModelNotAvailableError(RuntimeError):
    """A model the configuration asks for is not on this machine (nothing is downloaded at run time)."""
