"""The tiny SD pipelines built from config, and loading of local diffusers pipelines (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from influencer_pipeline.diffusion import build_tiny_sd, load_pipeline, pick_device
from influencer_pipeline.errors import ModelNotAvailableError


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


def test_build_is_small_deterministic_and_leaves_the_callers_rng_alone(tmp_path: Path) -> None:
    build_tiny_sd(tmp_path / "warm")
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    build_tiny_sd(tmp_path / "again")

    assert torch.rand(1) == expected_next
    # What keeps every build cheap is its size, not a stopwatch (a wall-clock bound fails on a busy machine).
    weights = sum(path.stat().st_size for path in (tmp_path / "again").rglob("*.safetensors"))
    assert weights < 10 * 1024 * 1024, f"the tiny pipeline's weights grew to {weights / 1e6:.1f} MB"
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (tmp_path / "warm" / part).read_bytes() == (tmp_path / "again" / part).read_bytes()
    index = json.loads((tmp_path / "again" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert (tmp_path / "again" / "tokenizer" / "tokenizer.json").is_file()


def test_tiny_is_built_once_into_the_cache_and_reused(tiny_cache: Path) -> None:
    pipe = load_pipeline("tiny", tiny_cache, device="cpu", dtype=torch.float16)
    built = {p.name for p in tiny_cache.iterdir()}
    again = load_pipeline("tiny", tiny_cache, device="cpu")

    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.unet.dtype == torch.float32  # half precision is CUDA-only
    assert pipe.device.type == "cpu"
    assert built == {"tiny-v1"} == {p.name for p in tiny_cache.iterdir()}
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert torch.equal(pipe.unet.conv_in.weight, again.unet.conv_in.weight)
    ids = pipe.tokenizer("a photo of ohwx woman").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id


def test_tiny_sdxl_loads_as_an_sdxl_pipeline(tiny_cache: Path) -> None:
    pipe = load_pipeline("tiny-sdxl", tiny_cache, device="cpu")
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert pipe.unet.config.addition_embed_type == "text_time"


def test_a_local_diffusers_directory_loads_by_path(tiny_cache: Path, tmp_path: Path) -> None:
    directory = build_tiny_sd(tmp_path / "my-sd15")
    pipe = load_pipeline(str(directory), tiny_cache, device="cpu")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.safety_checker is None


def test_a_missing_base_model_says_where_it_looked_and_how_to_provide_one(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "sd15"
    with pytest.raises(ModelNotAvailableError) as error:
        load_pipeline(str(missing), tmp_path / "cache", device="cpu")
    message = str(error.value)
    assert str(missing) in message
    assert "nothing is downloaded" in message
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "EMBEDDED_BASE_MODEL=" in message


def test_a_folder_that_is_not_a_diffusers_pipeline_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "v1-5-pruned.safetensors").write_bytes(b"not really")
    with pytest.raises(ModelNotAvailableError, match=r"no model_index\.json"):
        load_pipeline(str(tmp_path), tmp_path / "cache", device="cpu")


def test_auto_device_is_cuda_only_when_torch_sees_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda"
    assert pick_device("cpu") == "cpu"
