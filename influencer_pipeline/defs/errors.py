"""How user errors surface in Dagster: as a final step failure carrying the message, never retried.

The failure carries the message and nothing else: no chained `InputError` with its own stack trace under it, so
the run log and the UI's error dialog open on "file/field: rule. Fix: ...", and every problem a check found is in
that one message.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

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
