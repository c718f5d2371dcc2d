"""The embedded image engine on the tiny model with a LoRA the embedded trainer really trained."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import GenerationRequest, LoraRef
from influencer_pipeline.generation.embedded import (
    SAMPLERS,
    SCHEDULES,
    SEED_LIMIT,
    EmbeddedImageEngine,
    GenerationStopped,
)
from tests.diffusion import Trained, trained_once


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return trained_once(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(trained: Trained) -> EmbeddedImageEngine:
    engine = EmbeddedImageEngine("tiny", cache_dir=trained.cache_dir, device="cpu")
    assert engine.deploy_lora(trained.result.lora_path, "ava.safetensors") == "ava.safetensors"
    return engine


def ask(
    seed: int | None = 1, strength: float | None = None, lora: str = "ava.safetensors", **fields: object
) -> GenerationRequest:
    """A fast request: 64 px (the tiny model's size), 2 steps, with the LoRA when a strength is given."""
    loras = (LoraRef(lora, strength),) if strength is not None else ()
    options = {"width": 64, "height": 64, "steps": 2, "cfg": 1.0, **fields}  # cfg 1: one UNet pass per step
    return GenerationRequest(prompt="ohwx woman, portrait", seed=seed, loras=loras, **options)


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_same_seed_same_image_and_every_parameter_is_recorded(engine: EmbeddedImageEngine) -> None:
    done: list[tuple[int, int]] = []
    guided = {"strength": 0.8, "cfg": 5.0, "negative_prompt": "blurry"}
    first, second, other = engine.generate(
        [ask(**guided), ask(**guided), ask(seed=2, **guided)], progress=lambda d, t: done.append((d, t))
    )

    assert first.png.startswith(b"\x89PNG") and pixels(first.png).shape == (64, 64, 3)
    assert first.png == second.png
    assert np.abs(pixels(first.png) - pixels(other.png)).max() > 0
    assert done == [(1, 3), (2, 3), (3, 3)]
    assert first.params == {
        "prompt": "ohwx woman, portrait",
        "negative_prompt": "blurry",
        "seed": 1,
        "steps": 2,
        "cfg": 5.0,
        "sampler": "euler",
        "scheduler": "normal",
        "width": 64,
        "height": 64,
        "render_width": 64,
        "render_height": 64,
        "loras": [{"name": "ava.safetensors", "strength": 0.8}],
        "engine": "embedded",
        "base_model": "tiny",
    }


def test_the_lora_changes_the_image_and_its_strength_matters(engine: EmbeddedImageEngine) -> None:
    base, off, half, full, base_again = engine.generate(
        [ask(), ask(strength=0.0), ask(strength=0.5), ask(strength=1.0), ask()]
    )

    assert np.abs(pixels(full.png) - pixels(base.png)).max() > 0
    assert np.abs(pixels(full.png) - pixels(half.png)).max() > 0
    assert off.png == base.png  # strength 0 is the base model, as in ComfyUI
    assert base_again.png == base.png  # a request without LoRAs switches the loaded LoRA off


def test_a_fresh_engine_with_the_same_lora_and_seed_reproduces_the_image(
    engine: EmbeddedImageEngine, trained: Trained
) -> None:
    other = EmbeddedImageEngine("tiny", cache_dir=trained.cache_dir, device="cpu")
    other.deploy_lora(trained.result.lora_path, "ava.safetensors")
    assert other.generate([ask(strength=1.0)])[0].png == engine.generate([ask(strength=1.0)])[0].png


def test_a_missing_seed_is_drawn_and_recorded_so_the_image_can_be_remade(engine: EmbeddedImageEngine) -> None:
    drawn = engine.generate([ask(seed=None, steps=1)])[0]
    seed = drawn.params["seed"]
    assert isinstance(seed, int) and 0 <= seed < SEED_LIMIT
    assert engine.generate([ask(seed=seed, steps=1)])[0].png == drawn.png


@pytest.mark.parametrize(
    ("sampler", "scheduler"), [("euler_ancestral", "normal"), ("dpmpp_2m", "karras"), ("ddim", "ddim_uniform")]
)
def test_comfyui_sampler_names_render(engine: EmbeddedImageEngine, sampler: str, scheduler: str) -> None:
    image = engine.generate([ask(sampler=sampler, scheduler=scheduler)])[0]
    assert pixels(image.png).shape == (64, 64, 3)
    assert (image.params["sampler"], image.params["scheduler"]) == (sampler, scheduler)


def test_every_sampler_and_schedule_name_maps_to_a_diffusers_scheduler(engine: EmbeddedImageEngine) -> None:
    engine._pipeline()
    for sampler, (class_name, _) in SAMPLERS.items():
        assert type(engine._scheduler(sampler, "normal")).__name__ == class_name
    for schedule, options in SCHEDULES.items():
        config = engine._scheduler("euler", schedule).config
        assert all(config[key] == value for key, value in options.items())
    with pytest.raises(InputError, match=r"'karras' has no diffusers equivalent for sampler 'ddim'"):
        engine._scheduler("ddim", "karras")


def test_tiny_model_renders_large_requests_at_native_size_and_resizes(engine: EmbeddedImageEngine) -> None:
    image = engine.generate([ask(width=192, height=128, steps=1)])[0]
    assert pixels(image.png).shape == (128, 192, 3)
    assert (image.params["render_width"], image.params["render_height"]) == (64, 40)
    assert (image.params["width"], image.params["height"]) == (192, 128)


def test_bad_requests_fail_before_any_image_with_the_field_named(trained: Trained) -> None:
    engine = EmbeddedImageEngine("tiny", cache_dir=trained.cache_dir, device="cpu")
    cases = {
        "loras\\[0\\].name.*not deployed": ask(strength=1.0),
        "sampler.*'dpmpp_2s_ancestral'": ask(sampler="dpmpp_2s_ancestral"),
        "scheduler.*'beta'": ask(scheduler="beta"),
        "width.*not a multiple of 8": ask(width=100),
        "steps.*whole number": ask(steps=0),
        "cfg.*from 1 to 30": ask(cfg=0.5),
        "seed.*whole number": ask(seed=-1),
        "prompt.*must not be empty": GenerationRequest(prompt="  "),
    }
    for pattern, bad in cases.items():
        with pytest.raises(InputError, match=pattern):
            engine.generate([ask(), bad])
    assert engine._pipe is None  # nothing was loaded, let alone rendered
    with pytest.raises(InputError, match="does not exist"):
        engine.deploy_lora(trained.output / "missing.safetensors", "missing")


def test_a_stop_request_ends_generation(engine: EmbeddedImageEngine) -> None:
    with pytest.raises(GenerationStopped, match="after 0 of 2"):
        engine.generate([ask(), ask()], should_stop=lambda: True)
    calls: list[int] = []

    def stop_during_the_first_image() -> bool:
        calls.append(1)
        return len(calls) > 1  # the pre-image check passes, the per-step check stops

    with pytest.raises(GenerationStopped, match="while rendering"):
        engine.generate([ask(steps=3)], should_stop=stop_during_the_first_image)


def test_an_sdxl_lora_loads_into_the_sdxl_engine(tmp_path_factory: pytest.TempPathFactory) -> None:
    trained_xl = trained_once(tmp_path_factory, "sdxl")
    engine = EmbeddedImageEngine("tiny-sdxl", cache_dir=trained_xl.cache_dir, device="cpu")
    engine.deploy_lora(trained_xl.result.lora_path, "ava-xl")

    base, styled = engine.generate([ask(), ask(strength=1.0, lora="ava-xl")])

    assert np.abs(pixels(styled.png) - pixels(base.png)).max() > 0


def test_redeploying_a_name_reloads_the_file_even_when_retrained_in_place(trained: Trained, tmp_path: Path) -> None:
    deployed = tmp_path / "ava.safetensors"
    shutil.copyfile(trained.result.checkpoints[0], deployed)
    engine = EmbeddedImageEngine("tiny", cache_dir=trained.cache_dir, device="cpu")
    engine.deploy_lora(deployed, "ava.safetensors")
    early = engine.generate([ask(strength=1.0, steps=1)])[0]
    shutil.copyfile(trained.result.lora_path, deployed)
    engine.deploy_lora(deployed, "ava.safetensors")
    final = engine.generate([ask(strength=1.0, steps=1)])[0]
    assert np.abs(pixels(early.png) - pixels(final.png)).max() > 0
