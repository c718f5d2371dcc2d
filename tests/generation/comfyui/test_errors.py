"""ComfyUI's rejections and failures become one `ComfyUIError` that names the request, the node, the input and
the fix; a failed prompt cancels the rest of ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from influencer_pipeline.generation.comfyui import ComfyUIError
from influencer_pipeline.generation.comfyui.errors import describe_rejection, history_failure
from tests.generation.comfy_standin import ComfyStandin
from tests.generation.comfyui.support import (
    make_engine,
    our_runs,
    prompts,
    wait_for,
    write_template,
)

# ----- rejected by ComfyUI -------------------------------------------------------------------------------------------


def test_a_400_names_the_node_class_and_input(standin: ComfyStandin, tmp_path: Path) -> None:
    folder = write_template(tmp_path, "no-vae", lambda graph: graph["8"]["inputs"].pop("vae"))
    engine = make_engine(standin, template="no-vae", templates_dir=folder)
    with pytest.raises(ComfyUIError) as caught:
        engine.generate(prompts(1))
    message = str(caught.value)
    assert "prompt_outputs_failed_validation" in message
    assert "node 8 (VAEDecode) input 'vae': Required input is missing" in message


def test_an_unknown_node_class_says_to_install_it(standin: ComfyStandin, tmp_path: Path) -> None:
    folder = write_template(tmp_path, "custom", lambda graph: graph["8"].update(class_type="FancyVAEDecode"))
    with pytest.raises(ComfyUIError, match=r"FancyVAEDecode does not exist.*install that custom node"):
        make_engine(standin, template="custom", templates_dir=folder).generate(prompts(1))


def test_partially_valid_prompts_are_failures_and_get_cancelled(standin: ComfyStandin, tmp_path: Path) -> None:
    """A 200 with node_errors means ComfyUI queued the valid outputs only: still a failure, and ours get cancelled."""
    standin.seconds_per_image = 0.5
    folder = write_template(
        tmp_path,
        "half",
        lambda graph: graph.update({"20": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}}),
    )
    with pytest.raises(ComfyUIError, match=r"node 20 \(SaveImage\) input 'filename_prefix'"):
        make_engine(standin, template="half", templates_dir=folder).generate(prompts(1))
    wait_for(lambda: standin.queue_remaining() == 0)
    assert [run.status for run in our_runs(standin)] in (["deleted"], ["interrupted"])


def test_recorded_shape_rejections_get_a_fix() -> None:
    payload = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            "4": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "ckpt_name: 'x.safetensors' not in (list of length 37)",
                        "extra_info": {
                            "input_name": "ckpt_name",
                            "input_config": None,
                            "received_value": "x.safetensors",
                        },
                    }
                ],
                "dependent_outputs": ["9"],
                "class_type": "CheckpointLoaderSimple",
            }
        },
    }
    message = describe_rejection("generation request 1", payload)
    assert "node 4 (CheckpointLoaderSimple) input 'ckpt_name'" in message
    assert "models/checkpoints" in message
    lora = json.loads(json.dumps(payload).replace("ckpt_name", "lora_name"))
    assert "deploy it with deploy_lora" in describe_rejection("generation request 1", lora)


# ----- failed while running ------------------------------------------------------------------------------------------


def test_an_execution_error_names_the_node_and_cancels_the_rest(standin: ComfyStandin) -> None:
    standin.seconds_per_image = 0.1
    standin.fail_execution("VAEDecode", "CUDA error: an illegal memory access was encountered")
    with pytest.raises(ComfyUIError) as caught:
        make_engine(standin).generate(prompts(4))
    message = str(caught.value)
    assert "generation request 1" in message and "(VAEDecode)" in message
    assert "RuntimeError: CUDA error: an illegal memory access was encountered" in message
    wait_for(lambda: standin.queue_remaining() == 0)
    statuses = [run.status for run in our_runs(standin)]
    assert statuses[0] == "error" and set(statuses[1:]) <= {"deleted", "interrupted"}


def test_out_of_memory_suggests_a_smaller_image(standin: ComfyStandin) -> None:
    standin.fail_execution("KSampler", "Allocation on device", exception_type="torch.OutOfMemoryError")
    with pytest.raises(ComfyUIError, match=r"torch\.OutOfMemoryError.*lower width/height"):
        make_engine(standin).generate(prompts(1))


def test_an_interrupt_from_elsewhere_is_reported(standin: ComfyStandin) -> None:
    standin.seconds_per_image = 0.3

    def someone_presses_cancel() -> bool:
        if any(run.status == "running" for run in our_runs(standin)):
            requests.post(f"{standin.url}/interrupt", timeout=2)
        return False

    with pytest.raises(ComfyUIError, match=r"interrupted generation request 1.*cancelled it in ComfyUI"):
        make_engine(standin).generate(prompts(1), should_stop=someone_presses_cancel)


def test_a_history_entry_names_its_first_failure() -> None:
    """An execution error is reported before an interruption recorded in the same entry, and a bare error status
    still fails; a successful entry is no failure."""
    error = ["execution_error", {"node_id": "8", "node_type": "VAEDecode", "exception_type": "RuntimeError"}]
    interrupted = ["execution_interrupted", {"node_id": "3", "node_type": "KSampler"}]
    both = {"status": {"status_str": "error", "messages": [interrupted, error]}}
    failure = history_failure("clip 2", "p-1", both)
    assert failure is not None and "ComfyUI failed on clip 2 (prompt p-1) in node 8 (VAEDecode)" in str(failure)
    only_interrupted = history_failure("clip 2", "p-1", {"status": {"messages": [interrupted]}})
    assert only_interrupted is not None and "interrupted clip 2 (prompt p-1) at node 3" in str(only_interrupted)
    bare = history_failure("clip 2", "p-1", {"status": {"status_str": "error", "messages": []}})
    assert bare is not None and "as failed without an error message" in str(bare)
    success = {"status": {"status_str": "success", "messages": [["execution_success", {}]]}, "outputs": {}}
    assert history_failure("clip 2", "p-1", success) is None
