"""LoRA versions: every trained LoRA is kept under an id derived from what it was trained on.

A version id is a digest of the training inputs (curated images, their captions and the preset with every
override), so retraining identical inputs finds the version it already made, and a change (more epochs, new
photos) makes a new one beside it: nothing is overwritten. A version's `manifest.json` is written after its
weights, checkpoints and loss curve, so a version with a manifest is complete.

Which version renders a persona's content: a pin (run config, then `lora_version:` in persona.yaml) if given,
else the latest successful one, whose record is copied to `manifests/lora_weights.json`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from influencer_pipeline.errors import InputError
from influencer_pipeline.media.keys import (
    lora_manifest_key,
    lora_version_manifest_key,
    lora_versions_prefix,
)
from influencer_pipeline.media.store import MediaStore

VERSION_CHARS = 16


def version_id(preset_json: str, dataset_fingerprint: str) -> str:
    """The id of the LoRA trained from this preset (with overrides) on this dataset (images + captions)."""
    return hashlib.sha256((preset_json + dataset_fingerprint).encode()).hexdigest()[:VERSION_CHARS]


def read_version(store: MediaStore, persona: str, version: str) -> dict[str, Any] | None:
    """The record of a complete version, or None."""
    key = lora_version_manifest_key(persona, version)
    return json.loads(store.read_bytes(key)) if store.exists(key) else None


def list_versions(store: MediaStore, persona: str) -> list[dict[str, Any]]:
    """Every complete version of the persona's LoRA, oldest first."""
    records = [read_version(store, persona, v) for v in store.list_children(lora_versions_prefix(persona))]
    return sorted((r for r in records if r), key=lambda r: (r.get("trained_at", ""), r["version"]))


def latest_version(store: MediaStore, persona: str) -> dict[str, Any] | None:
    key = lora_manifest_key(persona)
    return json.loads(store.read_bytes(key)) if store.exists(key) else None


def save_version(store: MediaStore, persona: str, record: dict[str, Any]) -> None:
    """Record a finished version and make it the latest successful one (its files must already be stored)."""
    data = json.dumps(record, indent=2).encode()
    store.write_bytes(lora_version_manifest_key(persona, record["version"]), data)
    store.write_bytes(lora_manifest_key(persona), data)


def active_version(store: MediaStore, persona: str, pin: str | None, pinned_by: str) -> dict[str, Any] | None:
    """The version content uses: `pin` (from `pinned_by`, for the error message) when given, else the latest.

    A pin may be a unique prefix of an id (at least 6 characters). None when nothing was trained yet.
    """
    if not pin:
        return latest_version(store, persona)
    versions = list_versions(store, persona)
    matches = [r for r in versions if r["version"] == pin] or [
        r for r in versions if len(pin) >= 6 and r["version"].startswith(pin)
    ]
    if len(matches) == 1:
        return matches[0]
    known = [
        f"{r['version']} ({r.get('trained_at', '?')[:16]}, {r.get('preset', {}).get('name', '?')})" for r in versions
    ]
    rule = f"LoRA version {pin!r} {'is ambiguous' if matches else 'does not exist'}"
    fix = f"use one of {known}" if known else "train the persona first (materialize lora_weights)"
    raise InputError(pinned_by, rule, f"{fix}, or remove the pin to use the latest")
