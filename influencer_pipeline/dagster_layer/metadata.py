"""Metadata helpers: what a person sees on a materialization in the Dagster UI."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import dagster as dg


def image_preview(jpeg_or_png: bytes, alt: str = "preview") -> dg.MetadataValue:
    """An inline thumbnail. Keep it small: metadata lives in the event-log database."""
    kind = "png" if jpeg_or_png[:4] == b"\x89PNG" else "jpeg"
    encoded = base64.b64encode(jpeg_or_png).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/{kind};base64,{encoded})")


def table(rows: Sequence[Mapping[str, object]], columns: Sequence[tuple[str, str]]) -> dg.MetadataValue:
    """A metadata table from dict rows; `columns` gives (name, dagster type) pairs in display order."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns])
    records = [dg.TableRecord({name: row.get(name) for name, _ in columns}) for row in rows]
    return dg.MetadataValue.table(records=records, schema=schema)
