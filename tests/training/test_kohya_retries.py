"""Which kohya failures the `lora_weights` asset retries: only those that can pass on a second try."""

from __future__ import annotations

import shlex
from pathlib import Path

import dagster as dg
import pytest

from influencer_pipeline.dagster_layer.resources import KohyaTrainerResource, LocalMediaStoreResource
from influencer_pipeline.defs.training.assets import lora_weights
from influencer_pipeline.media import LocalMediaStore
from tests.fakes import accelerate_command, fake_sd_scripts, fake_tokenizers
from tests.images import make_photo


def materialize_with_fake_kohya(tmp_path: Path) -> dg.ExecuteInProcessResult:
    store = LocalMediaStore(tmp_path / "media")
    store.write_bytes("uploads/ava/persona.yaml", b"trigger_word: ohwx\nclass_word: woman\n")
    for i in range(2):
        path = tmp_path / f"{i}.png"
        make_photo(i, size=(256, 256)).save(path)
        store.write_bytes(f"personas/ava/dataset/{i:016x}.png", path.read_bytes())
        store.write_bytes(f"personas/ava/dataset/{i:016x}.txt", f"ohwx woman, photo {i}\n".encode())
    config = {"preset": "sd15-standard", "epochs": 2, "repeats": 1, "base_model": str(tmp_path)}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        return dg.materialize(
            [lora_weights],
            partition_key="ava",
            instance=instance,
            resources={
                "media": LocalMediaStoreResource(root=str(store.root)),
                "trainer": KohyaTrainerResource(
                    sd_scripts=str(fake_sd_scripts(tmp_path / "sd-scripts")),
                    accelerate=shlex.join(accelerate_command()),
                    tokenizer_cache_dir=str(fake_tokenizers(tmp_path / "tokenizers")),
                    work_dir=str(tmp_path / "work"),
                ),
            },
            run_config=dg.RunConfig(ops={"lora_weights": {"config": config}}),
            raise_on_error=False,
        )


def test_a_python_exception_in_the_trainer_fails_the_step_without_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: retried twice after 30 s and 60 s, to fail the same way (minutes lost on a typo)."""
    monkeypatch.setenv("FAKE_KOHYA_OOM", "1")  # the fake raises CUDA out of memory at the first step
    result = materialize_with_fake_kohya(tmp_path)
    assert not result.success
    events = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in events
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "lower batch_size or resolution" in failure.event_specific_data.error.message
