"""How user errors surface in Dagster: as a final step failure carrying the message, never retried."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from influencer_pipeline.errors import InputError, ModelNotAvailableError


@contextmanager
def user_errors_are_final() -> Iterator[None]:
    """Bad input and missing models do not heal on retry: fail at once, with the file/field, rule and fix."""
    try:
        yield
    except (InputError, ModelNotAvailableError) as err:
        raise dg.Failure(description=str(err), allow_retries=False) from err
