"""The training group materialised for real: embedded engines, kohya (fake accelerate) + ComfyUI (stand-in)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import dagster as dg
import pytest
from dagster._config import ConfigTypeKind
from PIL import Image

from influencer_pipeline.dagster_layer.loras import resolve_lora
from influencer_pipeline.dagster_layer.resources import (
    ComfyUIImageEngineResource,
    EmbeddedImageEngineResource,
    EmbeddedTrainerResource,
    KohyaTrainerResource,
    LocalMediaStoreResource,
    resources_for,
)
from influencer_pipeline.dagster_layer.settings import Settings
from influencer_pipeline.definitions import defs
from influencer_pipeline.defs.training.assets import lora_samples, lora_weights
from influencer_pipeline.media import LocalMediaStore
from influencer_pipeline.personas import parse_persona
from influencer_pipeline.training.presets import list_presets
from tests.defs.test_datasets import failure_text
from tests.fakes import accelerate_command, fake_sd_scripts, fake_tokenizers
from tests.generation.comfy_standin import ComfyStandin
from tests.images import make_photo

FAST = {"epochs": 1, "repeats": 1, "batch_size": 2, "save_every_n_epochs": 1}


@pytest.fixture
def store(tmp_path) -> LocalMediaStore:
    """A persona whose dataset is already curated and captioned (what the datasets group leaves behind)."""
    store = LocalMediaStore(tmp_path / "media")
    store.write_bytes("uploads/ava/persona.yaml", b"trigger_word: ohwx\nclass_word: woman\n")
    for i in range(4):
        path = tmp_path / f"{i}.png"
        make_photo(i, size=(512, 512)).save(path)
        store.write_bytes(f"personas/ava/dataset/{i:016x}.png", path.read_bytes())
        store.write_bytes(f"personas/ava/dataset/{i:016x}.txt", f"ohwx woman, photo {i}\n".encode())
    return store


def materialize(store: LocalMediaStore, assets, tmp_path: Path, run_config=None, **resources):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        return dg.materialize(
            assets,
            partition_key="ava",
            instance=instance,
            resources={"media": LocalMediaStoreResource(root=str(store.root)), **resources},
            run_config=run_config,
            raise_on_error=False,
        )


def meta(result, node: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def training_config(**overrides) -> dg.RunConfig:
    return dg.RunConfig(ops={"lora_weights": {"config": {"preset": "embedded-tiny", **FAST, **overrides}}})


def test_embedded_trainer_and_engine_end_to_end(store, tmp_path) -> None:
    work = str(tmp_path / "work")
    result = materialize(
        store,
        [lora_weights, lora_samples],
        tmp_path,
        run_config=dg.RunConfig(
            ops={
                "lora_weights": {"config": {"preset": "embedded-tiny", **FAST}},
                "lora_samples": {"config": {"prompts": ["ohwx woman, portrait"], "steps": 2}},
            }
        ),
        trainer=EmbeddedTrainerResource(work_dir=work),
        image_engine=EmbeddedImageEngineResource(work_dir=work),
    )
    assert result.success, failure_text(result)
    weights = meta(result, "lora_weights")
    assert weights["engine"] == "embedded" and weights["steps"] == 2 and weights["epochs"] == 1
    assert weights["file_size_bytes"] > 0 and "data:image/png;base64," in weights["loss_curve"]
    version = weights["version"]
    assert store.exists(f"personas/ava/lora/versions/{version}/ava.safetensors")
    assert store.exists(f"personas/ava/lora/versions/{version}/loss_curve.png")
    record = json.loads(store.read_bytes(f"personas/ava/lora/versions/{version}/manifest.json"))
    assert record["version"] == version and record["preset"]["name"] == "embedded-tiny"
    assert json.loads(store.read_bytes("personas/ava/manifests/lora_weights.json")) == record
    mode = store.path(record["lora_key"]).stat().st_mode
    assert mode & 0o044 == 0o044, f"LoRA written {oct(mode)}: a ComfyUI service under another user cannot read it"
    samples = meta(result, "lora_samples")
    assert samples["samples"] == 1 and 0 < samples["consistency_score"] <= 1 and samples["lora_version"] == version
    params = json.loads(store.read_bytes(f"personas/ava/lora/versions/{version}/samples/00.json"))
    assert params["engine"] == "embedded" and params["seed"] == 1234 and params["loras"]
    assert Image.open(store.path(f"personas/ava/lora/versions/{version}/samples/grid.png")).size[0] > 0


def test_kohya_trainer_and_comfyui_engine_end_to_end(store, tmp_path) -> None:
    """The production engines, picked by resource config alone: kohya (fake accelerate) then ComfyUI (stand-in)."""
    sd_scripts = fake_sd_scripts(tmp_path / "sd-scripts")
    loras = tmp_path / "comfy" / "loras"
    loras.mkdir(parents=True)
    with ComfyStandin(output_dir=tmp_path / "comfy" / "output", loras_dir=loras, seconds_per_image=0.01) as comfy:
        result = materialize(
            store,
            [lora_weights, lora_samples],
            tmp_path,
            run_config=dg.RunConfig(
                ops={
                    "lora_weights": {"config": {"preset": "sd15-standard", "epochs": 2, "base_model": str(tmp_path)}},
                    "lora_samples": {"config": {"prompts": ["ohwx woman, cafe", "ohwx woman, beach"]}},
                }
            ),
            trainer=KohyaTrainerResource(
                sd_scripts=str(sd_scripts),
                accelerate=shlex.join(accelerate_command()),
                tokenizer_cache_dir=str(fake_tokenizers(tmp_path / "tokenizers")),
                work_dir=str(tmp_path),
            ),
            image_engine=ComfyUIImageEngineResource(url=comfy.url, loras_dir=str(loras), work_dir=str(tmp_path)),
        )
        submitted = comfy.received("POST", "/prompt")
    assert result.success, failure_text(result)
    weights = meta(result, "lora_weights")
    assert (weights["engine"], weights["epochs"], weights["checkpoints"]) == ("kohya", 2, 1)
    assert store.exists(f"personas/ava/lora/versions/{weights['version']}/checkpoints/ava-000001.safetensors")
    samples = meta(result, "lora_samples")
    assert samples["engine"] == "comfyui" and samples["samples"] == 2
    deployed = [p.name for p in loras.iterdir() if not p.name.startswith(".")]  # not the deployment ledger
    assert deployed == [samples["lora"]]
    graphs = [json.dumps(r.body) for r in submitted]
    assert len(graphs) == 2 and all(samples["lora"] in g for g in graphs)
    samples_folder = f"personas/ava/lora/versions/{weights['version']}/samples/"
    assert json.loads(store.read_bytes(samples_folder + "01.json"))["engine"] == "comfyui"


def test_out_of_range_override_fails_at_once_with_the_range(store, tmp_path) -> None:
    result = materialize(
        store,
        [lora_weights],
        tmp_path,
        run_config=training_config(epochs=5000),
        trainer=EmbeddedTrainerResource(work_dir=str(tmp_path / "w")),
    )
    assert not result.success
    assert "'epochs': 5000 is out of range 1-1000" in failure_text(result)
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events), "bad input is never retried"
    assert not (tmp_path / "w").exists()
    assert list(store.list("personas/ava/lora/")) == []


def test_unknown_preset_is_refused_by_the_config_schema_before_any_run(store, tmp_path) -> None:
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        materialize(
            store,
            [lora_weights],
            tmp_path,
            run_config=training_config(preset="nope"),
            trainer=EmbeddedTrainerResource(work_dir=str(tmp_path / "w")),
        )
    assert "nope" in str(refused.value) and "sd15-standard" in str(refused.value)


def test_training_launchpad_lists_presets_and_describes_every_field_with_its_range() -> None:
    """What the launchpad of persona_training shows for lora_weights: a choice list of presets read from the
    presets folder, and a description (with the range, for numbers) on every field."""
    job = defs.resolve_job_def("persona_training")
    ops = job.run_config_schema.config_type.fields["ops"].config_type
    fields = ops.fields["lora_weights"].config_type.fields["config"].config_type.fields
    preset = fields["preset"].config_type
    assert preset.kind == ConfigTypeKind.ENUM
    assert {v.config_value for v in preset.enum_values} == {"", *list_presets()}
    assert all(field.description for field in fields.values()), [n for n, f in fields.items() if not f.description]
    assert "(1 to 1000)" in fields["epochs"].description
    assert "(1e-06 to 1)" in fields["learning_rate"].description


def test_lora_versions_are_kept_reused_and_never_overwritten(store, tmp_path) -> None:
    """Two trainings with different settings are two versions side by side; training the first settings again
    reuses the first version instead of overwriting anything, and makes it the latest again."""
    trainer = EmbeddedTrainerResource(work_dir=str(tmp_path / "work"))

    def train(seed: int) -> dict:
        result = materialize(store, [lora_weights], tmp_path, training_config(seed=seed), trainer=trainer)
        assert result.success, failure_text(result)
        return meta(result, "lora_weights")

    first, second = train(1), train(2)
    assert first["version"] != second["version"] and not first["reused"] and not second["reused"]
    first_lora = store.read_bytes(f"personas/ava/lora/versions/{first['version']}/ava.safetensors")
    for version in (first["version"], second["version"]):
        assert store.exists(f"personas/ava/lora/versions/{version}/manifest.json")
    assert json.loads(store.read_bytes("personas/ava/manifests/lora_weights.json"))["version"] == second["version"]
    assert [r.data["version"] for r in second["versions"].records] == [second["version"], first["version"]]

    rolled_back = parse_persona("ava", f"lora_version: {first['version']}\n", "uploads/ava/persona.yaml")
    assert resolve_lora(store, rolled_back, "", "post_images config")["version"] == first["version"]
    assert resolve_lora(store, rolled_back, second["version"][:8], "post_images config")["version"] == second["version"]

    again = train(1)
    assert again["version"] == first["version"] and again["reused"]
    assert store.read_bytes(f"personas/ava/lora/versions/{first['version']}/ava.safetensors") == first_lora
    assert json.loads(store.read_bytes("personas/ava/manifests/lora_weights.json"))["version"] == first["version"]


def test_environment_switches_engines_with_no_code_change(tmp_path) -> None:
    embedded = resources_for(Settings.from_env({}))
    assert embedded["trainer"].engine == "embedded" and embedded["image_engine"].engine == "embedded"
    env = {"KOHYA_SD_SCRIPTS": str(tmp_path), "COMFYUI_URL": "http://127.0.0.1:8188"}
    resources = resources_for(Settings.from_env(env))
    assert resources["trainer"].engine == "kohya" and resources["trainer"].default_preset == "sd15-standard"
    assert resources["image_engine"].engine == "comfyui"


def test_gpu_assets_are_pooled_tagged_and_retried() -> None:
    for asset in (lora_weights, lora_samples):
        spec = asset.specs_by_key[asset.key]
        assert asset.op.pool == "gpu"
        assert asset.op.tags["gpu"] == "1"
        assert asset.op.retry_policy is not None and asset.op.retry_policy.max_retries >= 1
        assert spec.group_name == "training"
