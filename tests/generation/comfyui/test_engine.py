"""`ComfyUIEngine` against the protocol-faithful stand-in: images and clips come back with their parameters,
requests are checked against what ComfyUI lists before anything is queued, and a LoRA's or checkpoint's base
model must match (all timeouts are short)."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import ClipRequest, GenerationRequest, LoraRef
from influencer_pipeline.generation.comfyui import ComfyUIEngine, ComfyUIError
from influencer_pipeline.generation.workflows import TEMPLATES_DIR
from tests.generation.comfy_standin import ComfyStandin
from tests.generation.comfyui.support import (
    SD15,
    colour_of,
    make_engine,
    our_runs,
    prompts,
    still,
)
from tests.generation.loras import write_checkpoint, write_lora

# ----- the happy path ------------------------------------------------------------------------------------------------


def test_images_come_back_in_request_order_with_their_parameters(standin: ComfyStandin) -> None:
    requests_ = [
        GenerationRequest(prompt="first", seed=11, width=320, height=256),
        GenerationRequest(
            prompt="second", negative_prompt="blurry", steps=12, cfg=5.5, sampler="dpmpp_2m", scheduler="karras"
        ),
        GenerationRequest(prompt="third", seed=33),
    ]
    engine = make_engine(standin)
    images = engine.generate(requests_)

    assert [image.params["prompt"] for image in images] == ["first", "second", "third"]
    assert images[0].params["seed"] == 11 and images[2].params["seed"] == 33
    assert 0 <= images[1].params["seed"] < 2**53, "a random seed is drawn and recorded"
    for image in images:
        assert image.png.startswith(b"\x89PNG")
        run = standin.runs[image.params["prompt_id"]]
        assert run.graph["3"]["inputs"]["seed"] == image.params["seed"], "the recorded seed is the one used"
        assert colour_of(image.png) == tuple(random.Random(image.params["seed"]).randrange(256) for _ in range(3))
    assert Image.open(io.BytesIO(images[0].png)).size == (320, 256)
    second = images[1].params
    assert {k: second[k] for k in ("negative_prompt", "steps", "cfg", "sampler", "scheduler")} == {
        "negative_prompt": "blurry",
        "steps": 12,
        "cfg": 5.5,
        "sampler": "dpmpp_2m",
        "scheduler": "karras",
    }
    assert second["engine"] == "comfyui" and second["workflow"] == "sd15-lora-txt2img"
    assert second["workflow_hash"] == engine.template.hash and second["loras"] == []


def test_random_seeds_differ_between_images(standin: ComfyStandin) -> None:
    images = make_engine(standin).generate(prompts(4))
    assert len({image.params["seed"] for image in images}) == 4


def test_progress_is_reported_per_image(standin: ComfyStandin) -> None:
    seen: list[tuple[int, int]] = []
    make_engine(standin).generate(prompts(3), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_nothing_to_do_touches_no_server(standin: ComfyStandin) -> None:
    assert make_engine(standin).generate([]) == []
    assert standin.requests == []


def test_identical_prompts_are_served_from_comfyuis_cache(standin: ComfyStandin) -> None:
    """ComfyUI caches outputs: a resubmitted identical graph runs nothing and its history points at the old file."""
    first, second = make_engine(standin).generate(prompts(1, seed=5) * 2)
    assert first.png == second.png
    assert [run.status for run in our_runs(standin)] == ["success", "success"]


# ----- rejected before anything is queued ----------------------------------------------------------------------------


def test_an_unlisted_lora_fails_before_submission(standin: ComfyStandin) -> None:
    request = GenerationRequest(prompt="x", loras=(LoraRef("ghost.safetensors"),))
    with pytest.raises(InputError, match=r"generation request 2: loras\[0\]\.name.*deploy it first"):
        make_engine(standin).generate([GenerationRequest(prompt="ok"), request])
    assert standin.received("POST", "/prompt") == []


def test_samplers_and_checkpoints_are_checked_against_object_info(standin: ComfyStandin) -> None:
    with pytest.raises(InputError, match="sampler: 'euler_fast' is not one of ComfyUI's samplers"):
        make_engine(standin).generate([GenerationRequest(prompt="x", sampler="euler_fast")])
    engine = ComfyUIEngine(standin.url, None, "missing.safetensors", timeout_s=2, connect_timeout_s=1)
    with pytest.raises(InputError, match=r"checkpoint: 'missing\.safetensors' is not one of ComfyUI's checkpoints"):
        engine.generate(prompts(1))
    assert standin.received("POST", "/prompt") == []
    assert standin.received("GET", "/object_info/KSampler"), "lists come from the per-class object_info"


# ----- image-to-video (svd-img2vid) ----------------------------------------------------------------------------------


def test_stills_are_uploaded_and_come_back_as_animated_clips(standin: ComfyStandin) -> None:
    stills = [still((200, 40, 40)), still((40, 200, 40))]
    clips = make_engine(standin).animate(
        [ClipRequest(stills[0], seed=5, frames=8, fps=8), ClipRequest(stills[1], frames=4, width=512, height=896)]
    )

    uploads = standin.received("POST", "/upload/image")
    assert len(uploads) == 2
    for upload, data, clip in zip(uploads, stills, clips, strict=True):
        assert data in upload.body, "the still's bytes are sent as the multipart file"
        run = standin.runs[clip.params["prompt_id"]]
        [image_name] = [n["inputs"]["image"] for n in run.graph.values() if n["class_type"] == "LoadImage"]
        assert image_name.startswith("influencer/still-") and (standin.input_dir / image_name).read_bytes() == data
        frames = Image.open(io.BytesIO(clip.webp))
        assert frames.format == "WEBP" and getattr(frames, "is_animated", False)
        assert frames.n_frames == clip.params["frames"]
    assert clips[0].params["seed"] == 5 and clips[0].params["workflow"] == "svd-img2vid"
    assert clips[1].params["frames"] == 4 and clips[1].params["checkpoint"] == "svd_xt.safetensors"
    conditioning = next(
        n["inputs"]
        for n in standin.runs[clips[1].params["prompt_id"]].graph.values()
        if n["class_type"] == "SVD_img2vid_Conditioning"
    )
    assert (conditioning["width"], conditioning["height"], conditioning["video_frames"]) == (512, 896, 4)


def test_the_same_still_twice_is_one_file_in_comfyui(standin: ComfyStandin) -> None:
    data = still((10, 20, 30))
    engine = make_engine(standin)
    engine.animate([ClipRequest(data, seed=1, frames=2)])
    engine.animate([ClipRequest(data, seed=2, frames=2)])
    assert len(list((standin.input_dir / "influencer").iterdir())) == 1


def test_a_renamed_upload_is_loaded_under_the_name_comfyui_answered(standin: ComfyStandin) -> None:
    data = still((1, 2, 3))
    engine = make_engine(standin)
    taken = standin.input_dir / "influencer" / f"still-{hashlib.sha256(data).hexdigest()[:20]}.png"
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"someone else's file under that name")
    [clip] = engine.animate([ClipRequest(data, frames=2)])
    run = standin.runs[clip.params["prompt_id"]]
    [image_name] = [n["inputs"]["image"] for n in run.graph.values() if n["class_type"] == "LoadImage"]
    assert image_name.endswith(" (1).png") and (standin.input_dir / image_name).read_bytes() == data
    assert taken.read_bytes() == b"someone else's file under that name", "never overwritten"


def test_a_missing_video_checkpoint_fails_before_anything_is_uploaded(standin: ComfyStandin) -> None:
    engine = make_engine(standin, video_checkpoint="svd_missing.safetensors")
    with pytest.raises(InputError, match=r"svd_missing\.safetensors"):
        engine.animate([ClipRequest(still((0, 0, 0)))])
    assert not standin.received("POST", "/upload/image") and not standin.runs


def test_a_failed_upload_or_a_failed_clip_is_a_clear_error(standin: ComfyStandin) -> None:
    engine = make_engine(standin)
    standin.fail_uploads(1, status=413)
    with pytest.raises(ComfyUIError, match="HTTP 413 to uploading the still for clip 1"):
        engine.animate([ClipRequest(still((0, 0, 1)), frames=2)])
    standin.fail_execution("SVD_img2vid_Conditioning", "CUDA out of memory", "torch.OutOfMemoryError")
    with pytest.raises(ComfyUIError, match=r"clip 1 .* \(SVD_img2vid_Conditioning\): torch.OutOfMemoryError"):
        engine.animate([ClipRequest(still((0, 0, 2)), frames=2)])


def test_a_template_that_saves_stills_is_refused_for_clips(standin: ComfyStandin, tmp_path: Path) -> None:
    template = json.loads((TEMPLATES_DIR / "svd-img2vid.json").read_text())
    template["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "x"}}
    folder = tmp_path / "templates"
    folder.mkdir()
    for name in ("sd15-lora-txt2img", "svd-img2vid"):
        source = TEMPLATES_DIR / f"{name}.json"
        (folder / f"{name}.json").write_text(json.dumps(template) if name == "svd-img2vid" else source.read_text())
    engine = make_engine(standin, templates_dir=folder)
    with pytest.raises(ComfyUIError, match=r"not an animated WEBP.*must end in a SaveAnimatedWEBP node"):
        engine.animate([ClipRequest(still((3, 3, 3)), frames=2)])


# ----- the LoRA's base family must match the checkpoint's ------------------------------------------------------------


@pytest.mark.parametrize(("family", "label"), [("tiny", "an unknown base model"), ("sdxl", "SDXL")])
def test_a_lora_of_another_family_is_refused_before_it_is_copied(
    standin: ComfyStandin, tmp_path: Path, family: str, label: str
) -> None:
    """Real ComfyUI renders such a LoRA's images without it and reports success (tests/generation/recordings/
    lora_family_mismatch_*.json): the header check is the only thing that stops it."""
    trained = write_lora(tmp_path / "ava.safetensors", family, claim="sd_v1")
    with pytest.raises(InputError) as caught:
        make_engine(standin).deploy_lora(trained, "ava-1234")
    message = str(caught.value)
    assert f"trained for {label}, but COMFYUI_CHECKPOINT 'v1-5-pruned-emaonly.safetensors'" in message
    assert "ss_base_model_version='sd_v1'" in message, "the (false) claim in the metadata is shown, not trusted"
    assert "train the persona's LoRA on a Stable Diffusion 1.x base model" in message
    assert list(standin.loras_dir.iterdir()) == [], "nothing is copied into ComfyUI's folder"


def test_without_the_check_comfyui_would_report_success_and_only_log_the_mismatch(
    standin: ComfyStandin, tmp_path: Path
) -> None:
    """What the stand-in does, as the real ComfyUI: a foreign LoRA placed by hand still yields a 'successful' image."""
    write_lora(standin.loras_dir / "foreign.safetensors", "sdxl")
    [image] = make_engine(standin).generate([GenerationRequest(prompt="x", loras=(LoraRef("foreign.safetensors"),))])
    assert image.png.startswith(b"\x89PNG")
    assert standin.console == [
        "ERROR lora diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight shape '[320, 768]' is "
        "invalid for input of size 655360"
    ]


def test_a_matching_lora_deploys_on_each_family(standin: ComfyStandin, tmp_path: Path) -> None:
    sd1 = make_engine(standin).deploy_lora(write_lora(tmp_path / "a.safetensors", "sd1"), "a")
    sdxl_engine = make_engine(standin, template="sdxl-lora-txt2img")
    sdxl = sdxl_engine.deploy_lora(write_lora(tmp_path / "b.safetensors", "sdxl"), "b")
    assert (sd1, sdxl) == ("a.safetensors", "b.safetensors")
    with pytest.raises(InputError, match=r"trained for Stable Diffusion 1\.x, but .* is SDXL"):
        sdxl_engine.deploy_lora(write_lora(tmp_path / "c.safetensors", "sd1"), "c")


def test_the_checkpoint_header_decides_when_comfyuis_models_folder_is_visible(
    standin: ComfyStandin, tmp_path: Path
) -> None:
    """With models/checkpoints beside models/loras, COMFYUI_CHECKPOINT's own header is read: a template that
    declares another family is a configuration error, named before any LoRA is copied."""
    write_checkpoint(tmp_path / "checkpoints" / SD15, "sdxl")  # an SDXL file under the SD1.5 name
    with pytest.raises(
        InputError, match=r"COMFYUI_CHECKPOINT: 'v1-5-pruned-emaonly\.safetensors' is a SDXL checkpoint"
    ):
        make_engine(standin).deploy_lora(write_lora(tmp_path / "a.safetensors", "sd1"), "a")
    write_checkpoint(tmp_path / "checkpoints" / SD15, "sd1")
    assert make_engine(standin).lora_family() == ("sd1", f"COMFYUI_CHECKPOINT {SD15!r}")


def test_a_lora_that_is_not_safetensors_is_a_clear_error(standin: ComfyStandin, tmp_path: Path) -> None:
    trained = tmp_path / "ava.safetensors"
    trained.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InputError, match=r"ava\.safetensors: is not a readable safetensors file"):
        make_engine(standin).deploy_lora(trained, "ava")


# ----- image-to-video needs an SVD checkpoint ------------------------------------------------------------------------


def test_a_non_svd_video_checkpoint_is_refused_before_anything_is_queued(standin: ComfyStandin) -> None:
    """ComfyUI lists every checkpoint for ImageOnlyCheckpointLoader and fails mid-run on a non-SVD one
    (tests/generation/recordings/img2vid_not_svd_checkpoint.json); the engine refuses it before uploading or
    queueing."""
    engine = make_engine(standin, video_checkpoint="sd_xl_base_1.0.safetensors")
    with pytest.raises(
        InputError, match=r"COMFYUI_VIDEO_CHECKPOINT: 'sd_xl_base_1\.0\.safetensors' does not look like"
    ):
        engine.animate([ClipRequest(still((0, 0, 0)), frames=2)])
    same = make_engine(standin, video_checkpoint=SD15)
    with pytest.raises(InputError, match="is the image checkpoint"):
        same.animate([ClipRequest(still((0, 0, 0)), frames=2)])
    assert not standin.received("POST", "/upload/image") and not standin.runs


def test_the_stand_in_fails_a_non_svd_checkpoint_as_comfyui_does(standin: ComfyStandin) -> None:
    """The failure the check prevents, recorded from the real ComfyUI and replayed by the stand-in."""
    engine = make_engine(standin, video_checkpoint="sd_xl_base_1.0.safetensors")
    engine.check_video_checkpoint = lambda: None  # type: ignore[method-assign]  # what the engine did before
    with pytest.raises(ComfyUIError, match=r"SVD_img2vid_Conditioning\): AttributeError: 'NoneType' object has no"):
        engine.animate([ClipRequest(still((0, 0, 0)), frames=2)])


def test_a_readable_video_checkpoint_is_judged_by_its_header(standin: ComfyStandin, tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "checkpoints" / "svd_xt.safetensors", "sd1")  # named svd, but it is not
    with pytest.raises(InputError, match="is not a Stable Video Diffusion checkpoint: it has no CLIP-vision"):
        make_engine(standin).animate([ClipRequest(still((0, 0, 0)), frames=2)])
    write_checkpoint(tmp_path / "checkpoints" / "svd_xt.safetensors", "svd")
    [clip] = make_engine(standin).animate([ClipRequest(still((0, 0, 0)), frames=2)])
    assert clip.webp[:4] == b"RIFF"
