"""How user errors surface in Dagster: as a final step failure carrying the message, never retried.

The failure carries the message and nothing else: no chained `InputError` with its own stack trace under it, so
the run log and the UI's error dialog open on "file/field: rule. Fix: ...", and every problem a check found is in
that one message.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field

from influencer_pipeline.errors import InputError, ModelNotAvailableError


def final_failure(message: str, metadata: dict[str, object] | None = None) -> dg.Failure:
    """A failure that is never retried, whose description is the whole message a person reads."""
    return dg.Failure(description=message, metadata=metadata, allow_retries=False)


@contextmanager
def user_errors_are_final() -> Iterator[None]:
    """Bad input and missing models do not heal on retry: fail at once, with the file/field, rule and fix."""
    message: str | None = None
    try:
        yield
    except (InputError, ModelNotAvailableError) as err:
        message = str(err)
    if message is not None:
        # Raised after the `except` and `from None`: Dagster then records no cause or context chain.
        raise final_failure(message) from None


def ranged(default: object, low: float, high: float, description: str, multiple_of: int | None = None) -> Any:
    """A config field whose range the launchpad shows in its description and `check_ranges` enforces.

    Not a pydantic bound: pydantic checks config before the step's body runs, and Dagster retries that failure
    like a crash (the retry policy of GPU steps), with a validation trace instead of the field and its fix.
    """
    step = f", a multiple of {multiple_of}" if multiple_of else ""
    return Field(
        default,
        description=f"{description} ({low:g} to {high:g}{step})",
        json_schema_extra={"range": [low, high, multiple_of]},
    )


def range_problems(config: BaseModel) -> list[str]:
    """Every field declared with a range (`ranged`, or a preset override) that is set outside it."""
    problems = []
    for name, info in type(config).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        value = getattr(config, name)
        if "range" not in extra or value is None:
            continue
        low, high, multiple_of = extra["range"]
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{low:g} to {high:g}" if high is not None else f"at least {low:g}"
            problems.append(f"'{name}': {value!r} is out of range {bounds}")
        elif multiple_of and value % multiple_of:
            problems.append(f"'{name}': {value!r} is not a multiple of {multiple_of}")
    return problems


def check_ranges(config: BaseModel, where: str) -> None:
    """`range_problems` as one InputError (raise it inside `user_errors_are_final`)."""
    problems = range_problems(config)
    if problems:
        raise InputError(where, "; ".join(problems), "use values within the ranges the launchpad shows")
