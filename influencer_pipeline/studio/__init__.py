"""The studio: one page listing every persona, its dataset, LoRA, coming posts, accounts and last failure."""

from __future__ import annotations

import os


def studio_url(anchor: str = "") -> str:
    """Where a creator opens the studio from the Dagster UI: `STUDIO_URL`, else `/studio` on the same server (the
    token-guarded webserver serves it beside the UI; `make studio` serves it on its own port for `make dev`)."""
    base = os.environ.get("STUDIO_URL", "").strip() or "/studio"
    return f"{base}#{anchor}" if anchor else base
