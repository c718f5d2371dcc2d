"""The tiny models' LoRAs tell the truth about their base: their metadata does not claim SD1.5/SDXL, and their
headers (what ComfyUI deployment checks) name no family a real checkpoint has."""

from __future__ import annotations

from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save_file

from influencer_pipeline.diffusion import load_pipeline
from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.model_family import check_lora_family, lora_family, metadata, read_header
from influencer_pipeline.training.embedded import base_model_version, kohya_state_dict


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.mark.parametrize(("name", "width"), [("tiny", 32), ("tiny-sdxl", 64)])
def test_a_tiny_models_lora_claims_no_real_base_and_is_refused_for_comfyui(
    tiny_cache: Path, tmp_path: Path, name: str, width: int
) -> None:
    pipe = load_pipeline(name, tiny_cache, "cpu")
    version = base_model_version(name, pipe)
    assert version not in ("sd_v1", "sdxl_base_v1-0") and f"width {width}" in version

    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_v"]))
    lora = tmp_path / "ava.safetensors"
    tensors = kohya_state_dict(get_peft_model_state_dict(pipe.unet), 4)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(lora), metadata={"ss_base_model_version": version})

    header = read_header(lora)
    assert metadata(header)["ss_base_model_version"] == version
    found = lora_family(header)
    assert found is not None and found.name is None and f"is {width} wide" in found.evidence
    for family in ("sd1", "sdxl"):
        with pytest.raises(InputError, match="trained for an unknown base model"):
            check_lora_family(lora, family, "COMFYUI_CHECKPOINT 'v1-5-pruned-emaonly.safetensors'")
