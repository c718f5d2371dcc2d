"""LoRA deployment into the folder ComfyUI reads as models/loras: copied atomically, waited for until ComfyUI
lists it, and a persona's older files retired once nothing queued uses them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import GenerationRequest, LoraRef
from influencer_pipeline.generation.comfyui import ComfyUIEngine, ComfyUIError
from influencer_pipeline.generation.comfyui.client import combo_options
from influencer_pipeline.generation.workflows import build_txt2img, load_template
from tests.generation.comfy_standin import ComfyStandin
from tests.generation.comfyui.support import (
    FOREIGN,
    SD15,
    make_engine,
    wait_for,
)
from tests.generation.loras import write_lora

# ----- copying and listing -------------------------------------------------------------------------------------------


def test_deploy_copies_the_lora_and_waits_until_comfyui_lists_it(standin: ComfyStandin, tmp_path: Path) -> None:
    trained = write_lora(tmp_path / "trained" / "pytorch_lora_weights.safetensors")
    engine = make_engine(standin)

    name = engine.deploy_lora(trained, "ava-v1")
    assert name == "ava-v1.safetensors"
    assert (standin.loras_dir / name).read_bytes() == trained.read_bytes()
    assert name in combo_options(standin.object_info()["LoraLoader"], "LoraLoader", "lora_name")
    assert sorted(p.name for p in standin.loras_dir.iterdir() if not p.name.startswith(".")) == [name], (
        "no temporary file is left behind"
    )

    images = engine.generate([GenerationRequest(prompt="ohwx", loras=(LoraRef(name, 0.7),))])
    assert images[0].params["loras"] == [{"name": name, "strength": 0.7}]
    graph = standin.runs[images[0].params["prompt_id"]].graph
    assert [n["inputs"]["lora_name"] for n in graph.values() if n["class_type"] == "LoraLoader"] == [name]


def test_deploy_skips_identical_content_and_replaces_changed_content(standin: ComfyStandin, tmp_path: Path) -> None:
    trained = write_lora(tmp_path / "ava.safetensors", seed=1)
    engine = make_engine(standin)
    engine.deploy_lora(trained, "ava.safetensors")
    deployed = standin.loras_dir / "ava.safetensors"
    first_inode = deployed.stat().st_ino

    engine.deploy_lora(trained, "ava.safetensors")
    assert deployed.stat().st_ino == first_inode, "identical content is not copied again"

    write_lora(trained, seed=2)
    engine.deploy_lora(trained, "ava.safetensors")
    assert deployed.read_bytes() == trained.read_bytes()
    assert [p.name for p in standin.loras_dir.iterdir() if not p.name.startswith(".")] == ["ava.safetensors"]


def test_deploy_to_a_folder_comfyui_does_not_read_times_out_clearly(standin: ComfyStandin, tmp_path: Path) -> None:
    elsewhere = tmp_path / "not-shared"
    elsewhere.mkdir()
    trained = write_lora(tmp_path / "ava.safetensors")
    engine = ComfyUIEngine(standin.url, elsewhere, SD15, poll_interval_s=0.05, deploy_timeout_s=0.3)
    with pytest.raises(ComfyUIError, match=r"does not list the LoRA 'ava\.safetensors'.*shared folder path"):
        engine.deploy_lora(trained, "ava")


def test_deploy_needs_a_shared_folder_and_a_plain_name(standin: ComfyStandin, tmp_path: Path) -> None:
    trained = write_lora(tmp_path / "ava.safetensors")
    with pytest.raises(ComfyUIError, match="no shared loras folder"):
        ComfyUIEngine(standin.url, None, SD15).deploy_lora(trained, "ava")
    with pytest.raises(ComfyUIError, match="does not exist here"):
        ComfyUIEngine(standin.url, tmp_path / "missing", SD15).deploy_lora(trained, "ava")
    with pytest.raises(InputError, match="plain file name"):
        make_engine(standin).deploy_lora(trained, "../models/checkpoints/ava")
    with pytest.raises(InputError, match="does not exist"):
        make_engine(standin).deploy_lora(tmp_path / "nope.safetensors", "ava")


# ----- deployed files do not pile up ---------------------------------------------------------------------------------


def test_a_new_version_replaces_the_personas_older_deployed_files(standin: ComfyStandin, tmp_path: Path) -> None:
    engine = make_engine(standin, retire_after_s=0)
    user_file = write_lora(standin.loras_dir / "ava-deadbeef.safetensors", seed=9)  # not deployed by us
    other = engine.deploy_lora(write_lora(tmp_path / "bo.safetensors", seed=3), "bo-11111111", group="bo")
    first = engine.deploy_lora(write_lora(tmp_path / "v1.safetensors", seed=1), "ava-aaaaaaaa", group="ava")
    second = engine.deploy_lora(write_lora(tmp_path / "v2.safetensors", seed=2), "ava-bbbbbbbb", group="ava")

    models = sorted(p.name for p in standin.loras_dir.iterdir() if not p.name.startswith("."))
    assert models == sorted([user_file.name, other, second]), f"{first} was removed, nothing else"
    ledger = engine.deployed()
    assert sorted(ledger) == sorted([other, second])
    assert ledger[second]["group"] == "ava"
    assert ledger[second]["sha256"] == hashlib.sha256((tmp_path / "v2.safetensors").read_bytes()).hexdigest()


def test_an_older_version_a_queued_prompt_uses_is_kept_until_a_later_deploy(
    standin: ComfyStandin, tmp_path: Path
) -> None:
    engine = make_engine(standin, retire_after_s=0)
    first = engine.deploy_lora(write_lora(tmp_path / "v1.safetensors", seed=1), "ava-aaaaaaaa", group="ava")
    standin.hang = True
    body = {
        "prompt": build_txt2img(
            load_template("sd15-lora-txt2img"),
            GenerationRequest(prompt="x", loras=(LoraRef(first),)),
            seed=1,
            checkpoint=SD15,
        ),
        "client_id": FOREIGN,
    }
    requests.post(f"{standin.url}/prompt", json=body, timeout=5).raise_for_status()
    second = engine.deploy_lora(write_lora(tmp_path / "v2.safetensors", seed=2), "ava-bbbbbbbb", group="ava")
    assert (standin.loras_dir / first).exists(), "a running prompt still uses it"
    requests.post(f"{standin.url}/interrupt", json={}, timeout=5)
    standin.hang = False
    wait_for(lambda: standin.queue_remaining() == 0)
    third = engine.deploy_lora(write_lora(tmp_path / "v3.safetensors", seed=3), "ava-cccccccc", group="ava")
    assert sorted(engine.deployed()) == [third]
    assert not (standin.loras_dir / first).exists() and not (standin.loras_dir / second).exists()


def test_a_recently_deployed_older_version_is_kept_for_runs_about_to_use_it(
    standin: ComfyStandin, tmp_path: Path
) -> None:
    """A content run deploys a pinned version and submits its prompts a few at a time: a retraining that deploys a
    newer version meanwhile must not pull the file from under the prompts not yet queued."""
    engine = make_engine(standin, retire_after_s=3600)
    first = engine.deploy_lora(write_lora(tmp_path / "v1.safetensors", seed=1), "ava-aaaaaaaa", group="ava")
    second = engine.deploy_lora(write_lora(tmp_path / "v2.safetensors", seed=2), "ava-bbbbbbbb", group="ava")
    assert sorted(engine.deployed()) == sorted([first, second])
    assert (standin.loras_dir / first).exists()
