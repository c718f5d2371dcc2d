"""The workflow builder: values land where ComfyUI reads them, LoRAs are chained structurally, user text never
becomes structure, out-of-range values fail with the field and its range, and every built graph passes the
stand-in's ComfyUI validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import GenerationRequest, LoraRef
from influencer_pipeline.generation.workflows import (
    ServerChoices,
    VideoRequest,
    WorkflowTemplate,
    available_templates,
    build_img2vid,
    build_txt2img,
    load_template,
    workflow_hash,
)
from tests.generation.comfy_standin import SAMPLERS, SCHEDULERS, ComfyStandin

SD15 = "v1-5-pruned-emaonly.safetensors"
CHOICES = ServerChoices(samplers=SAMPLERS, schedulers=SCHEDULERS, loras=("ava.safetensors", "style.safetensors"))


@pytest.fixture
def sd15() -> WorkflowTemplate:
    return load_template("sd15-lora-txt2img")


def lora_nodes(graph: dict) -> dict[str, dict]:
    return {node_id: node for node_id, node in graph.items() if node["class_type"] == "LoraLoader"}


def test_the_three_templates_ship_in_api_format() -> None:
    assert {"sd15-lora-txt2img", "sdxl-lora-txt2img", "svd-img2vid"} <= set(available_templates())
    for name in ("sd15-lora-txt2img", "sdxl-lora-txt2img", "svd-img2vid"):
        template = load_template(name)
        assert all("class_type" in node and "inputs" in node for node in template.graph.values())


def test_workflow_hash_is_canonical(sd15: WorkflowTemplate, tmp_path: Path) -> None:
    assert sd15.hash == workflow_hash(json.loads(json.dumps(sd15.graph)))
    (tmp_path / "reformatted.json").write_text(json.dumps(sd15.graph, indent=7, sort_keys=False))
    assert load_template("reformatted", tmp_path).hash == sd15.hash
    changed = json.loads(json.dumps(sd15.graph))
    changed["3"]["inputs"]["denoise"] = 0.5
    assert workflow_hash(changed) != sd15.hash


def test_values_land_in_their_inputs(sd15: WorkflowTemplate) -> None:
    request = GenerationRequest(
        prompt="ohwx woman in Lisbon",
        negative_prompt="blurry",
        steps=30,
        cfg=6.5,
        width=640,
        height=832,
        sampler="dpmpp_2m",
        scheduler="karras",
    )
    before = json.dumps(sd15.graph, sort_keys=True)
    graph = build_txt2img(sd15, request, seed=1234, checkpoint=SD15, choices=CHOICES)
    assert graph["6"]["inputs"]["text"] == "ohwx woman in Lisbon"
    assert graph["7"]["inputs"]["text"] == "blurry"
    assert graph["5"]["inputs"] == {"width": 640, "height": 832, "batch_size": 1}
    sampler = graph["3"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (1234, 30, 6.5)
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("dpmpp_2m", "karras")
    assert graph["4"]["inputs"]["ckpt_name"] == SD15
    assert json.dumps(sd15.graph, sort_keys=True) == before, "the template itself must not change"


def test_loras_are_chained_between_the_checkpoint_and_its_users(sd15: WorkflowTemplate) -> None:
    loras = (LoraRef("ava.safetensors", 0.8), LoraRef("style.safetensors", -0.25))
    graph = build_txt2img(sd15, GenerationRequest(prompt="x", loras=loras), seed=1, checkpoint=SD15, choices=CHOICES)
    chain = lora_nodes(graph)
    assert list(chain) == ["10", "11"]
    assert chain["10"]["inputs"]["model"] == ["4", 0] and chain["10"]["inputs"]["clip"] == ["4", 1]
    assert chain["11"]["inputs"]["model"] == ["10", 0] and chain["11"]["inputs"]["clip"] == ["10", 1]
    assert [n["inputs"]["lora_name"] for n in chain.values()] == ["ava.safetensors", "style.safetensors"]
    assert chain["11"]["inputs"]["strength_model"] == chain["11"]["inputs"]["strength_clip"] == -0.25
    assert graph["3"]["inputs"]["model"] == ["11", 0]
    assert graph["6"]["inputs"]["clip"] == graph["7"]["inputs"]["clip"] == ["11", 1]
    assert graph["8"]["inputs"]["vae"] == ["4", 2], "the VAE still comes from the checkpoint"


def test_no_loras_means_no_loader(sd15: WorkflowTemplate) -> None:
    graph = build_txt2img(sd15, GenerationRequest(prompt="x"), seed=1, checkpoint=SD15)
    assert lora_nodes(graph) == {}
    assert graph["3"]["inputs"]["model"] == ["4", 0]


def test_user_text_never_becomes_structure(sd15: WorkflowTemplate) -> None:
    hostile = '"], "class_type": "SaveImage"}, "99": {"class_type": "LoadImage", "inputs": {"image": ["4", 0]}}'
    request = GenerationRequest(prompt=hostile, negative_prompt='{"3": null}', loras=(LoraRef('"], ["4", 0'),))
    graph = build_txt2img(sd15, request, seed=1, checkpoint=SD15)
    assert set(graph) == set(sd15.graph) | {"10"}
    assert graph["6"]["inputs"]["text"] == hostile
    assert graph["7"]["inputs"]["text"] == '{"3": null}'
    assert graph["10"]["inputs"]["lora_name"] == '"], ["4", 0'
    assert json.loads(json.dumps(graph)) == graph


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"steps": 0}, "steps", "1 to 150"),
        ({"steps": 151}, "steps", "1 to 150"),
        ({"steps": 20.5}, "steps", "1 to 150"),
        ({"cfg": 0.5}, "cfg", "1 to 30"),
        ({"cfg": 31}, "cfg", "1 to 30"),
        ({"cfg": math.nan}, "cfg", "1 to 30"),
        ({"width": 255}, "width", "multiple of 8 from 256 to 2048"),
        ({"width": 2056}, "width", "multiple of 8 from 256 to 2048"),
        ({"height": 516}, "height", "multiple of 8 from 256 to 2048"),
        ({"sampler": "euler_fast"}, "sampler", "not one of ComfyUI's samplers"),
        ({"scheduler": "cosine"}, "scheduler", "not one of ComfyUI's schedulers"),
        ({"prompt": "  "}, "prompt", "must not be empty"),
        ({"loras": tuple(LoraRef("ava.safetensors") for _ in range(6))}, "loras", "0-5 LoRAs"),
        ({"loras": (LoraRef("ava.safetensors", 101.0),)}, "loras[0].strength", "-100 to 100"),
        ({"loras": (LoraRef("bob.safetensors"),)}, "loras[0].name", "does not list the LoRA 'bob.safetensors'"),
    ],
)
def test_out_of_range_values_name_the_field_and_range(
    sd15: WorkflowTemplate, change: dict, field: str, rule: str
) -> None:
    request = GenerationRequest(**{"prompt": "x", **change})
    with pytest.raises(InputError) as caught:
        build_txt2img(sd15, request, seed=1, checkpoint=SD15, choices=CHOICES, where="generation request 2")
    assert caught.value.where == f"generation request 2: {field}"
    assert rule in str(caught.value)


def test_size_errors_suggest_the_nearest_valid_size(sd15: WorkflowTemplate) -> None:
    with pytest.raises(InputError, match="use 520"):
        build_txt2img(sd15, GenerationRequest(prompt="x", width=517), seed=1, checkpoint=SD15)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_must_be_in_ksampler_range(sd15: WorkflowTemplate, seed: int) -> None:
    with pytest.raises(InputError, match="seed: must be a whole number from 0"):
        build_txt2img(sd15, GenerationRequest(prompt="x"), seed=seed, checkpoint=SD15)


def test_checkpoint_is_checked_against_comfyui(sd15: WorkflowTemplate) -> None:
    choices = ServerChoices(checkpoints=(SD15,))
    with pytest.raises(InputError, match=r"'nope\.safetensors' is not one of ComfyUI's checkpoints"):
        build_txt2img(sd15, GenerationRequest(prompt="x"), seed=1, checkpoint="nope.safetensors", choices=choices)


def test_template_names_and_formats_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"use one of: .*sd15-lora-txt2img"):
        load_template("sd16-lora-txt2img")
    with pytest.raises(InputError, match="file name without"):
        load_template("../pyproject")
    (tmp_path / "ui-export.json").write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(InputError, match="Save \\(API\\)"):
        load_template("ui-export", tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_template("broken", tmp_path)


def test_templates_must_leave_loras_to_the_builder(sd15: WorkflowTemplate, tmp_path: Path) -> None:
    graph = build_txt2img(
        sd15, GenerationRequest(prompt="x", loras=(LoraRef("a.safetensors"),)), seed=1, checkpoint=SD15
    )
    (tmp_path / "with-lora.json").write_text(json.dumps(graph))
    with pytest.raises(InputError, match="must not contain LoraLoader"):
        build_txt2img(load_template("with-lora", tmp_path), GenerationRequest(prompt="x"), seed=1, checkpoint=SD15)


def test_templates_are_found_by_their_links_not_their_ids(sd15: WorkflowTemplate, tmp_path: Path) -> None:
    renumbered = json.loads(json.dumps(sd15.graph).replace('"6"', '"positive"').replace('"7"', '"negative"'))
    (tmp_path / "renumbered.json").write_text(json.dumps(renumbered))
    graph = build_txt2img(
        load_template("renumbered", tmp_path),
        GenerationRequest(prompt="hi", negative_prompt="lo"),
        seed=1,
        checkpoint=SD15,
    )
    assert graph["positive"]["inputs"]["text"] == "hi"
    assert graph["negative"]["inputs"]["text"] == "lo"


def test_built_graphs_pass_comfyui_validation(tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    loras.mkdir()
    for name in ("ava.safetensors", "style.safetensors"):
        (loras / name).write_bytes(b"weights")
    standin = ComfyStandin(output_dir=tmp_path / "out", loras_dir=loras)
    request = GenerationRequest(prompt="x", loras=(LoraRef("ava.safetensors"), LoraRef("style.safetensors", 0.5)))
    for name, checkpoint in (("sd15-lora-txt2img", SD15), ("sdxl-lora-txt2img", "sd_xl_base_1.0.safetensors")):
        graph = build_txt2img(load_template(name), request, seed=2**64 - 1, checkpoint=checkpoint)
        assert standin.validate_prompt(graph)[:2] == (None, {}), name
    video = build_img2vid(
        load_template("svd-img2vid"), VideoRequest(image="example.png", seed=3), checkpoint="svd_xt.safetensors"
    )
    assert standin.validate_prompt(video)[:2] == (None, {})


def test_the_stand_in_rejects_what_comfyui_rejects(sd15: WorkflowTemplate, tmp_path: Path) -> None:
    """Guards the guard: a LoRA ComfyUI does not list fails validation with ComfyUI's error shape."""
    standin = ComfyStandin(output_dir=tmp_path / "out", loras_dir=tmp_path)
    graph = build_txt2img(
        sd15, GenerationRequest(prompt="x", loras=(LoraRef("gone.safetensors"),)), seed=1, checkpoint=SD15
    )
    error, node_errors, _ = standin.validate_prompt(graph)
    assert error is not None and error["type"] == "prompt_outputs_failed_validation"
    assert node_errors["10"]["class_type"] == "LoraLoader"
    assert node_errors["10"]["errors"][0]["type"] == "value_not_in_list"
    assert node_errors["10"]["dependent_outputs"] == ["9"]


def test_video_request_fills_the_svd_template() -> None:
    request = VideoRequest(image="stills/ava_001.png", seed=9, width=576, height=1024, video_frames=14, fps=8)
    graph = build_img2vid(load_template("svd-img2vid"), request, checkpoint="svd.safetensors")
    assert graph["2"]["inputs"]["image"] == "stills/ava_001.png"
    assert graph["1"]["inputs"]["ckpt_name"] == "svd.safetensors"
    conditioning = graph["3"]["inputs"]
    assert (conditioning["width"], conditioning["height"], conditioning["video_frames"], conditioning["fps"]) == (
        576,
        1024,
        14,
        8,
    )
    assert graph["5"]["inputs"]["seed"] == 9
    assert graph["7"]["inputs"]["fps"] == 8.0
    with pytest.raises(InputError, match="video_frames: must be a whole number from 1 to 128"):
        build_img2vid(
            load_template("svd-img2vid"), VideoRequest(image="a.png", seed=1, video_frames=500), checkpoint="s"
        )
