"""Fixtures for caption tests: a tiny BLIP on disk and a curated dataset as `training_images` leaves it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest

from influencer_pipeline.media import MediaStore
from influencer_pipeline.media.keys import dataset_manifest_key
from influencer_pipeline.personas import Persona
from tests.images import make_photo

MakeDataset = Callable[..., list[dict[str, str]]]


@pytest.fixture
def persona() -> Persona:
    return Persona(slug="ava", trigger_word="ohwx", class_word="woman")


def curated_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    make_photo(seed, size=(512, 512)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def make_dataset(store: MediaStore) -> MakeDataset:
    """Write a `training_images` manifest with `kept` curated PNGs and `rejected` rejections; return kept entries."""

    def make(persona: str = "ava", kept: int = 3, rejected: int = 1) -> list[dict[str, str]]:
        entries: list[dict[str, object]] = []
        for n in range(kept + rejected):
            source_key = f"uploads/{persona}/img{n:02d}.jpg"
            store.write_bytes(source_key, b"original upload bytes")
            if n < kept:
                image_id = f"{n:016x}"
                output_key = f"personas/{persona}/dataset/{image_id}.png"
                store.write_bytes(output_key, curated_png(n))
                entries.append(
                    {"source_key": source_key, "status": "kept", "image_id": image_id, "output_key": output_key}
                )
            else:
                entries.append(
                    {
                        "source_key": source_key,
                        "status": "rejected",
                        "image_id": None,
                        "output_key": None,
                        "reason": "too blurry",
                    }
                )
        manifest = {"persona": persona, "settings": {"size": 512}, "images": entries}
        store.write_bytes(dataset_manifest_key(persona), json.dumps(manifest).encode())
        return [e for e in entries if e["status"] == "kept"]  # type: ignore[misc]

    return make
