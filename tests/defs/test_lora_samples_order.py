"""lora_samples refuses bad sample settings before it copies the LoRA into ComfyUI's loras folder, and a retrained
persona's older deployed LoRA leaves that folder (kohya with fake accelerate, ComfyUI stand-in)."""

from __future__ import annotations

import shlex

import dagster as dg

from influencer_pipeline.dagster_layer.resources import ComfyUIImageEngineResource, KohyaTrainerResource
from influencer_pipeline.defs.training.assets import lora_samples, lora_weights
from tests.defs.test_datasets import failure_text
from tests.defs.test_training import materialize, store  # noqa: F401 - `store` is a fixture
from tests.fakes import accelerate_command, fake_sd_scripts, fake_tokenizers
from tests.generation.comfy_standin import ComfyStandin


def _run(store, tmp_path, comfy, loras, samples_config, epochs=1):  # noqa: F811 - the fixture's value
    return materialize(
        store,
        [lora_weights, lora_samples],
        tmp_path,
        run_config=dg.RunConfig(
            ops={
                "lora_weights": {"config": {"preset": "sd15-standard", "epochs": epochs, "base_model": str(tmp_path)}},
                "lora_samples": {"config": {"prompts": ["ohwx woman, cafe"], **samples_config}},
            }
        ),
        trainer=KohyaTrainerResource(
            sd_scripts=str(fake_sd_scripts(tmp_path / "sd-scripts")),
            accelerate=shlex.join(accelerate_command()),
            tokenizer_cache_dir=str(fake_tokenizers(tmp_path / "tokenizers")),
            work_dir=str(tmp_path),
        ),
        image_engine=ComfyUIImageEngineResource(url=comfy.url, loras_dir=str(loras), work_dir=str(tmp_path)),
    )


def test_a_bad_sample_size_fails_before_the_lora_is_copied(store, tmp_path) -> None:  # noqa: F811
    loras = tmp_path / "comfy" / "loras"
    loras.mkdir(parents=True)
    with ComfyStandin(output_dir=tmp_path / "comfy" / "output", loras_dir=loras, seconds_per_image=0.01) as comfy:
        result = _run(store, tmp_path, comfy, loras, {"size": 100})
        assert comfy.received("POST", "/prompt") == []
    assert not result.success
    assert "width: must be a multiple of 8 from 256 to 2048 pixels, got 100" in failure_text(result)
    assert [p.name for p in loras.iterdir() if not p.name.startswith(".")] == [], "no LoRA was copied"
