"""Fixtures for the Dagster-layer tests: a persona with a curated dataset and a trained embedded LoRA."""

from __future__ import annotations

import dagster as dg
import pytest

from influencer_pipeline.dagster_layer.resources import EmbeddedTrainerResource, LocalMediaStoreResource
from influencer_pipeline.defs.training.assets import lora_weights
from influencer_pipeline.media import LocalMediaStore
from tests.images import make_photo

DAY = "2026-11-23"
PERSONA_YAML = b"""trigger_word: ohwx
class_word: woman
platforms: [instagram, tiktok]
timezone: Europe/Rome
posting_times: ["09:30", "18:00"]
themes: [espresso, beaches]
"""


def key(persona: str = "ava", day: str = DAY) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"date": day, "persona": persona})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> LocalMediaStore:
    """A persona with a dataset and an embedded LoRA trained in one step (what the training group leaves)."""
    root = tmp_path_factory.mktemp("content")
    store = LocalMediaStore(root / "media")
    store.write_bytes("uploads/ava/persona.yaml", PERSONA_YAML)
    for i in range(2):
        path = root / f"{i}.png"
        make_photo(i, size=(512, 512)).save(path)
        store.write_bytes(f"personas/ava/dataset/{i:016x}.png", path.read_bytes())
        store.write_bytes(f"personas/ava/dataset/{i:016x}.txt", b"ohwx woman\n")
    fast = {"preset": "embedded-tiny", "epochs": 1, "batch_size": 2, "save_every_n_epochs": 1}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        result = dg.materialize(
            [lora_weights],
            partition_key="ava",
            instance=instance,
            resources={"media": media(store), "trainer": EmbeddedTrainerResource(work_dir=str(root / "work"))},
            run_config=dg.RunConfig(ops={"lora_weights": {"config": fast}}),
        )
    assert result.success
    return store


def media(store: LocalMediaStore) -> LocalMediaStoreResource:
    return LocalMediaStoreResource(root=str(store.root))
