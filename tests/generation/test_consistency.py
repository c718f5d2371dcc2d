"""Consistency scores (cheap colour/layout embedder and a tiny CLIP built from config) and the sample grid."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from influencer_pipeline.errors import InputError, ModelNotAvailableError
from influencer_pipeline.generation.consistency import ClipEmbedder, ColorLayoutEmbedder, consistency_score
from influencer_pipeline.generation.grid import render_grid
from tests.images import make_photo


@pytest.fixture(scope="module")
def dataset() -> list[Image.Image]:
    return [make_photo(seed, (160, 160)) for seed in range(4)]


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight CLIP (32 px input, 16-d embeddings) saved as a real CLIP checkpoint + image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    directory = tmp_path_factory.mktemp("tiny-clip")
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**small, "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def noisy(image: Image.Image, seed: int) -> Image.Image:
    grain = np.random.default_rng(seed).normal(0, 12, (*image.size[::-1], 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8))


def test_near_copies_of_dataset_images_score_higher_than_unrelated_images(dataset: list[Image.Image]) -> None:
    embedder = ColorLayoutEmbedder()
    close = [noisy(image, seed) for seed, image in enumerate(dataset[:2])]
    unrelated = [ImageOps.invert(make_photo(seed, (160, 160))).rotate(90) for seed in (10, 11)]

    exact = consistency_score(dataset[:2], dataset, embedder)
    near = consistency_score(close, dataset, embedder)
    far = consistency_score(unrelated, dataset, embedder)

    assert exact == pytest.approx(1.0)
    assert far < near < exact
    assert far >= -1.0


def test_the_score_is_nearest_neighbour_not_distance_to_the_centroid(dataset: list[Image.Image]) -> None:
    """A sample identical to one training photo is fully consistent, however different the others are."""
    assert consistency_score([dataset[3]], dataset, ColorLayoutEmbedder()) == pytest.approx(1.0)


def test_the_cheap_embedder_is_size_independent_and_handles_flat_images() -> None:
    embedder = ColorLayoutEmbedder()
    photo = make_photo(5, (300, 200))
    rows = embedder.embed([photo, photo.resize((150, 100)), Image.new("L", (40, 40), 128)])

    assert embedder.name == "color-histogram+gray-thumbnail"
    assert rows.shape == (3, 8**3 + 16 * 16)
    assert np.isfinite(rows).all()
    assert float(rows[0] @ rows[1]) > 0.95


def test_empty_inputs_are_refused_with_the_reason(dataset: list[Image.Image]) -> None:
    with pytest.raises(InputError, match="at least one sample and one dataset image"):
        consistency_score([], dataset, ColorLayoutEmbedder())


def test_a_tiny_clip_embeds_and_scores(tiny_clip_dir: Path, dataset: list[Image.Image]) -> None:
    embedder = ClipEmbedder(str(tiny_clip_dir), device="cpu", batch_size=3)

    rows = embedder.embed(dataset)

    assert embedder.name == f"clip:{tiny_clip_dir}"
    assert rows.shape == (4, 16)
    assert consistency_score(dataset[:1], dataset, embedder) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(embedder.embed(dataset[:1]), rows[:1], atol=1e-5)  # batching does not change embeddings


def test_a_missing_clip_model_says_how_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="hf download openai/clip-vit-base-patch32"):
        ClipEmbedder(str(tmp_path / "clip")).embed([make_photo(1, (64, 64))])


def test_the_grid_lays_out_labelled_cells(dataset: list[Image.Image]) -> None:
    images = [*dataset, Image.new("RGB", (64, 48), "red")]
    labels = ["ohwx woman at the beach at sunset, wearing a long red dress, high detail", "b", "c", "d", "e"]

    png = render_grid(images, labels)

    with Image.open(io.BytesIO(png)) as grid:
        assert grid.size == (3 * (160 + 4) + 4, 2 * (160 + 20 + 4) + 4)  # 3 columns x 2 rows of 160 px + label
        assert grid.getpixel((4 + 80, 4 + 80)) == dataset[0].getpixel((80, 80))
    with Image.open(io.BytesIO(render_grid([Image.new("RGB", (64, 64), "blue")]))) as single:
        assert single.size == (128 + 8, 128 + 8)  # small samples are enlarged to 128 px; no label band
    with pytest.raises(ValueError, match="5 images but 1 labels"):
        render_grid(images, ["only one"])
