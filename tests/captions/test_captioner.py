"""BlipCaptioner on a tiny BLIP built from config: real loading, preprocessing and generation, nothing downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from influencer_pipeline.captions.captioner import BlipCaptioner
from influencer_pipeline.captions.sidecars import with_trigger
from influencer_pipeline.errors import ModelNotAvailableError
from tests.images import make_photo


def photos() -> list[Image.Image]:
    """Photo-like images in mixed sizes and modes, as curated or user images may come."""
    return [
        make_photo(1, (512, 512)),
        make_photo(2, (640, 480)),
        make_photo(3, (300, 500)).convert("L"),
        make_photo(4, (256, 256)).convert("RGBA"),
        make_photo(5, (512, 512)),
    ]


def test_tiny_blip_captions_every_image_in_small_batches(tiny_blip_dir: Path) -> None:
    captioner = BlipCaptioner(str(tiny_blip_dir), device="cpu", batch_size=2, max_new_tokens=8)

    captions = captioner.caption(photos())

    assert len(captions) == 5
    assert all(isinstance(c, str) and "[" not in c for c in captions)
    for caption in captions:
        line = with_trigger(caption, "ohwx", "woman")
        assert line.startswith("ohwx woman")
        assert "\n" not in line


def test_batching_does_not_change_captions(tiny_blip_dir: Path) -> None:
    images = photos()[:3]
    one_by_one = BlipCaptioner(str(tiny_blip_dir), batch_size=1, max_new_tokens=8).caption(images)
    together = BlipCaptioner(str(tiny_blip_dir), batch_size=8, max_new_tokens=8).caption(images)
    assert one_by_one == together


def test_prompt_echo_is_removed(tiny_blip_dir: Path) -> None:
    captioner = BlipCaptioner(str(tiny_blip_dir), prompt="A photo of", max_new_tokens=8, num_beams=2)
    captions = captioner.caption(photos()[:2])
    assert len(captions) == 2
    assert not any(c.lower().startswith("a photo of") for c in captions)


def test_name_records_the_model_and_nothing_loads_before_use(tmp_path: Path) -> None:
    captioner = BlipCaptioner(str(tmp_path / "not-yet-there"))
    assert captioner.name == f"blip:{tmp_path / 'not-yet-there'}"
    assert captioner.caption([]) == []


def test_missing_model_directory_says_how_to_provide_it(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "blip-base"
    with pytest.raises(ModelNotAvailableError) as err:
        BlipCaptioner(str(missing)).caption(photos()[:1])
    message = str(err.value)
    assert str(missing) in message
    assert "hf download Salesforce/blip-image-captioning-base --local-dir models/blip-base" in message
    assert "CAPTION_MODEL=" in message
    assert "HF_HOME" in message


def test_directory_without_a_model_is_not_available(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="CAPTION_MODEL"):
        BlipCaptioner(str(tmp_path)).caption(photos()[:1])


def test_repo_id_not_in_cache_names_repo_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotAvailableError) as err:
        BlipCaptioner("Salesforce/blip-image-captioning-large").caption(photos()[:1])
    message = str(err.value)
    assert "'Salesforce/blip-image-captioning-large'" in message
    assert str(tmp_path / "hf" / "hub") in message
    assert "hf download Salesforce/blip-image-captioning-large --local-dir models/blip-base" in message


def test_repo_id_already_in_cache_loads_offline(
    tiny_blip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny-blip" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_blip_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)

    assert len(BlipCaptioner("acme/tiny-blip", max_new_tokens=4).caption(photos()[:2])) == 2


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BlipCaptioner("anything", batch_size=0)
