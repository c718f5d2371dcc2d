"""The ComfyUI engine against the protocol-faithful stand-in: results, seeds, LoRA deployment, a full queue,
and every failure mode ending in a clear error or a successful retry, never a hang (all timeouts are short)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from PIL import Image

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.base import ClipRequest, GenerationRequest, LoraRef
from influencer_pipeline.generation.comfyui import ComfyUIEngine, ComfyUIError
from influencer_pipeline.generation.comfyui.client import combo_options
from influencer_pipeline.generation.comfyui.errors import describe_rejection
from influencer_pipeline.generation.workflows import TEMPLATES_DIR, build_txt2img, load_template
from tests.generation.comfy_standin import ComfyStandin, Run
from tests.generation.loras import write_checkpoint, write_lora
from tests.support.waiting import wait_until

SD15 = "v1-5-pruned-emaonly.safetensors"
FOREIGN = "someone-else"


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[ComfyStandin]:
    (tmp_path / "loras").mkdir()
    with ComfyStandin(output_dir=tmp_path / "output", loras_dir=tmp_path / "loras", seconds_per_image=0.02) as server:
        yield server


def make_engine(standin: ComfyStandin, **overrides: Any) -> ComfyUIEngine:
    settings: dict[str, Any] = {
        "timeout_s": 3,
        "connect_timeout_s": 1,
        "poll_interval_s": 0.05,
        "deploy_timeout_s": 0.5,
        "retry_backoff_s": 0.01,
        **overrides,
    }
    return ComfyUIEngine(standin.url, standin.loras_dir, SD15, **settings)


def prompts(count: int, **fields: Any) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"ohwx woman, scene {i}", **fields) for i in range(count)]


def our_runs(standin: ComfyStandin) -> list[Run]:
    return [run for run in standin.runs.values() if run.client_id != FOREIGN]


def submit_foreign(standin: ComfyStandin) -> str:
    """Another client's prompt, queued straight over HTTP as a second user of the same ComfyUI would."""
    body = {"prompt": sd15_graph(steps=20), "client_id": FOREIGN}
    response = requests.post(f"{standin.url}/prompt", json=body, timeout=5)
    response.raise_for_status()
    return response.json()["prompt_id"]


def sd15_graph(steps: int) -> dict[str, Any]:
    request = GenerationRequest(prompt="raw", steps=steps)
    return build_txt2img(load_template("sd15-lora-txt2img"), request, seed=random.randrange(2**32), checkpoint=SD15)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    wait_until(condition, "the stand-in to reach the awaited state", timeout, interval=0.01)


def colour_of(png: bytes) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(png)).convert("RGB").getpixel((0, 0))


# ----- the happy path --------------------------------------------------------------------------------------------


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


def test_every_prompt_carries_our_client_id_and_a_uuid_prompt_id(standin: ComfyStandin) -> None:
    make_engine(standin).generate(prompts(3))
    submitted = standin.received("POST", "/prompt")
    client_ids = {r.body["client_id"] for r in submitted}
    assert len(client_ids) == 1
    assert all(str(uuid.UUID(r.body["prompt_id"])) == r.body["prompt_id"] for r in submitted)
    assert standin.received("GET", "/view"), "images are downloaded through /view"


def test_random_seeds_differ_between_images(standin: ComfyStandin) -> None:
    images = make_engine(standin).generate(prompts(4))
    assert len({image.params["seed"] for image in images}) == 4


def test_the_queue_stays_full(standin: ComfyStandin) -> None:
    standin.seconds_per_image = 0.04
    make_engine(standin, max_in_flight=3).generate(prompts(8))
    runs = sorted(our_runs(standin), key=lambda run: run.started_at or 0)
    assert [run.status for run in runs] == ["success"] * 8
    for previous, following in itertools.pairwise(runs):
        # queued before the last one finished, so ComfyUI's worker never waited for us (an event order, not a time)
        assert following.submitted_at < previous.finished_at, "the next prompt was queued before the last finished"
    for run in runs:
        queued = [r for r in runs if r.submitted_at <= run.submitted_at < r.finished_at]
        assert len(queued) <= 3, "never more than max_in_flight of ours in ComfyUI's queue"


def test_progress_is_reported_per_image(standin: ComfyStandin) -> None:
    seen: list[tuple[int, int]] = []
    make_engine(standin).generate(prompts(3), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_nothing_to_do_touches_no_server(standin: ComfyStandin) -> None:
    assert make_engine(standin).generate([]) == []
    assert standin.requests == []


def test_identical_prompts_are_served_from_comfyuis_cache(standin: ComfyStandin) -> None:
    """Pitfall 1 of the reference: a resubmitted identical graph runs nothing and points at the old file."""
    first, second = make_engine(standin).generate(prompts(1, seed=5) * 2)
    assert first.png == second.png
    assert [run.status for run in our_runs(standin)] == ["success", "success"]


# ----- LoRA deployment -------------------------------------------------------------------------------------------


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


# ----- rejected before anything is queued ------------------------------------------------------------------------


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


def test_invalid_url_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="COMFYUI_URL"):
        ComfyUIEngine("localhost:8188", tmp_path, SD15)


# ----- ComfyUI rejects or fails ----------------------------------------------------------------------------------


def write_template(tmp_path: Path, name: str, edit: Callable[[dict], None]) -> Path:
    graph = json.loads(json.dumps(load_template("sd15-lora-txt2img").graph))
    edit(graph)
    folder = tmp_path / "templates"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(graph))
    return folder


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
    """Pitfall 6: a 200 with node_errors means ComfyUI queued the valid outputs only."""
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


def test_reference_shaped_rejections_get_a_fix() -> None:
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


# ----- transport failures ----------------------------------------------------------------------------------------


def test_5xx_on_submit_is_retried_with_backoff(standin: ComfyStandin) -> None:
    standin.fail_submits(2)
    images = make_engine(standin).generate(prompts(2))
    assert len(images) == 2
    assert len(standin.received("POST", "/prompt")) == 4


def test_persistent_5xx_gives_up_with_a_clear_error(standin: ComfyStandin) -> None:
    standin.fail_submits(10, status=502)
    with pytest.raises(ComfyUIError, match=r"HTTP 502 on all 3 attempts.*ComfyUI console"):
        make_engine(standin, submit_retries=2).generate(prompts(1))


def test_an_unreachable_server_says_what_to_check(standin: ComfyStandin) -> None:
    standin.refuse_connections()
    with pytest.raises(ComfyUIError) as caught:
        make_engine(standin).generate(prompts(1))
    assert "COMFYUI_URL" in str(caught.value) and standin.url in str(caught.value)
    assert "connection refused" in str(caught.value)


def test_without_a_websocket_history_polling_takes_over(standin: ComfyStandin) -> None:
    standin.websocket_enabled = False
    images = make_engine(standin).generate(prompts(3))
    assert len(images) == 3
    assert standin.received("GET", "/ws"), "the socket was tried"
    assert len([r for r in standin.requests if r.path.startswith("/history/")]) >= 3


def test_a_dropped_websocket_falls_back_to_polling(standin: ComfyStandin, caplog: pytest.LogCaptureFixture) -> None:
    standin.drop_websockets_after(progress_frames=30)  # mid-way through the second image (25 steps each)
    images = make_engine(standin, poll_interval_s=0.5).generate(prompts(4))
    assert [image.params["prompt"] for image in images] == [f"ohwx woman, scene {i}" for i in range(4)]
    assert "WebSocket dropped" in caplog.text
    assert standin.dropped_at is not None
    polls = [r.at for r in standin.requests if r.path.startswith("/history/") and r.at > standin.dropped_at]
    # polling takes over at once, not at the live socket's next safety-net poll (every 10 x 0.5 s): a margin that
    # holds on a busy machine, measured between two events on the server's side
    assert polls and polls[0] - standin.dropped_at < 2.5


def test_a_prompt_that_never_finishes_times_out_and_is_cancelled(standin: ComfyStandin) -> None:
    standin.hang = True
    with pytest.raises(ComfyUIError, match=r"no image finished within 0\.4 s.*cancelled 1 queued and 1 running"):
        make_engine(standin, timeout_s=0.4).generate(prompts(2))
    ours = {run.prompt_id for run in our_runs(standin)}
    assert set(standin.received("POST", "/queue")[-1].body["delete"]) == ours
    assert [r.body for r in standin.received("POST", "/interrupt")] == [
        {"prompt_id": run.prompt_id} for run in our_runs(standin)[:1]
    ]
    wait_for(lambda: standin.queue_remaining() == 0)


def test_a_slow_download_times_out(standin: ComfyStandin) -> None:
    standin.view_delay_s = 30
    with pytest.raises(ComfyUIError, match=r"did not answer downloading .* within 0\.3 s"):
        make_engine(standin, http_timeout_s=0.3).generate(prompts(1))


def test_a_frozen_server_is_noticed_within_the_short_http_timeout_not_the_image_timeout(
    standin: ComfyStandin,
) -> None:
    """`timeout_s` (600 s by default) is how long one image may take; an ordinary HTTP call that hangs (a frozen
    server accepts connections but never answers) must fail within `http_timeout_s` instead."""
    engine = make_engine(standin, timeout_s=600, http_timeout_s=0.3)
    standin.freeze()
    outcome: list[BaseException | object] = []
    worker = threading.Thread(target=lambda: outcome.append(_outcome(lambda: engine.generate(prompts(1)))))
    worker.start()
    worker.join(timeout=60)  # generous: a busy machine is slow, but nowhere near the 600 s image timeout
    assert not worker.is_alive(), "the engine was still waiting on a frozen server after 60 s"
    assert isinstance(outcome[0], ComfyUIError)
    assert re.search(r"did not answer reading /object_info/KSampler within 0\.3 s.*frozen", str(outcome[0]))


def _outcome(call: Callable[[], object]) -> BaseException | object:
    try:
        return call()
    except BaseException as exc:
        return exc


def test_a_prompt_comfyui_forgot_is_an_error_not_a_wait(standin: ComfyStandin) -> None:
    standin.seconds_per_image = 1.0
    submit_foreign(standin)

    def someone_clears_the_queue() -> bool:
        if len(our_runs(standin)) == 2 and all(run.status == "pending" for run in our_runs(standin)):
            requests.post(f"{standin.url}/queue", json={"clear": True}, timeout=2)
        return False

    with pytest.raises(ComfyUIError, match=r"no longer knows prompt .*neither queued nor in its history"):
        make_engine(standin, max_in_flight=2).generate(prompts(2), should_stop=someone_clears_the_queue)


# ----- cancellation ----------------------------------------------------------------------------------------------


def test_stopping_deletes_only_our_pending_prompts(standin: ComfyStandin) -> None:
    standin.seconds_per_image = 0.2
    theirs = [submit_foreign(standin) for _ in range(2)]
    with pytest.raises(ComfyUIError, match=r"stopped because the run was terminated.*removed 3 .*interrupted 0"):
        make_engine(standin, max_in_flight=3).generate(prompts(5), should_stop=lambda: len(our_runs(standin)) >= 3)
    ours = {run.prompt_id for run in our_runs(standin)}
    assert [set(r.body["delete"]) for r in standin.received("POST", "/queue")] == [ours]
    assert standin.received("POST", "/interrupt") == [], "nothing of ours was running"
    wait_for(lambda: all(standin.runs[p].status == "success" for p in theirs))
    assert all(run.status == "deleted" for run in our_runs(standin))


def test_stopping_interrupts_our_running_prompt_by_id(standin: ComfyStandin) -> None:
    standin.seconds_per_image = 0.3
    theirs: list[str] = []

    def stop_when_ours_runs() -> bool:
        """Another client queues work behind ours just before the run is terminated."""
        if any(run.status == "running" for run in our_runs(standin)):
            theirs.append(submit_foreign(standin))
            return True
        return False

    with pytest.raises(ComfyUIError, match=r"removed 1 .*interrupted 1"):
        make_engine(standin, max_in_flight=2).generate(prompts(3), should_stop=stop_when_ours_runs)
    running, pending = our_runs(standin)
    assert [r.body for r in standin.received("POST", "/interrupt")] == [{"prompt_id": running.prompt_id}]
    assert set(standin.received("POST", "/queue")[0].body["delete"]) == {running.prompt_id, pending.prompt_id}
    wait_for(lambda: standin.runs[theirs[0]].status == "success")
    assert (running.status, pending.status) == ("interrupted", "deleted")


# ----- the stand-in itself ----------------------------------------------------------------------------------------


def test_the_stand_in_speaks_comfyuis_websocket_protocol(standin: ComfyStandin) -> None:
    """Guards the guard: frame order and routing as in reference A4, history written before `executing: null`."""
    sock = websocket.create_connection(f"ws://127.0.0.1:{standin.port}/ws?clientId=me", timeout=2)
    hello = json.loads(sock.recv())
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}
    ours = requests.post(f"{standin.url}/prompt", json={"prompt": sd15_graph(steps=2), "client_id": "me"}, timeout=2)
    prompt_id = ours.json()["prompt_id"]
    kinds = []
    while True:
        frame = json.loads(sock.recv())
        kinds.append(frame["type"])
        if frame["type"] == "executing" and frame["data"]["node"] is None:
            assert frame["data"]["prompt_id"] == prompt_id
            history = requests.get(f"{standin.url}/history/{prompt_id}", timeout=2).json()
            assert history[prompt_id]["status"]["status_str"] == "success"
            break
    sock.close()
    assert kinds[:3] == ["status", "execution_start", "execution_cached"]
    assert kinds.count("progress") == 2 and "executed" in kinds
    assert kinds.index("execution_success") < len(kinds) - 1, "success comes before the final executing frame"


def test_the_stand_in_routes_events_to_the_submitting_client_only(standin: ComfyStandin) -> None:
    sock = websocket.create_connection(f"ws://127.0.0.1:{standin.port}/ws?clientId=watcher", timeout=2)
    sock.recv()
    requests.post(f"{standin.url}/prompt", json={"prompt": sd15_graph(steps=2), "client_id": "other"}, timeout=2)
    requests.post(f"{standin.url}/prompt", json={"prompt": sd15_graph(steps=3)}, timeout=2)
    wait_for(lambda: standin.queue_remaining() == 0)
    sock.settimeout(0.2)
    kinds = []
    with contextlib.suppress(websocket.WebSocketTimeoutException):
        while True:
            kinds.append(json.loads(sock.recv())["type"])
    sock.close()
    assert set(kinds) == {"status", "progress"}, "only broadcasts: status, and progress of a prompt without client_id"
    assert kinds.count("progress") == 3


def test_the_stand_in_guards_view_paths(standin: ComfyStandin) -> None:
    view = f"{standin.url}/view"
    assert requests.get(view, params={"filename": "../secret.png"}, timeout=2).status_code == 400
    assert requests.get(view, params={"filename": "a.png", "subfolder": "../../etc"}, timeout=2).status_code == 403
    assert requests.get(view, params={"filename": "missing.png"}, timeout=2).status_code == 404


# ----- helpers ---------------------------------------------------------------------------------------------------


def test_combo_options_reads_both_object_info_shapes() -> None:
    v1 = {"input": {"required": {"lora_name": [["a.safetensors", "sub/b.safetensors"], {"tooltip": "…"}]}}}
    v3 = {"input": {"required": {"lora_name": ["COMBO", {"options": ["a.safetensors"]}]}}}
    assert combo_options(v1, "LoraLoader", "lora_name") == ["a.safetensors", "sub/b.safetensors"]
    assert combo_options(v3, "LoraLoader", "lora_name") == ["a.safetensors"]
    with pytest.raises(ComfyUIError, match="no option list"):
        combo_options({"input": {"required": {}}}, "LoraLoader", "lora_name")


# ----- image-to-video (svd-img2vid) ------------------------------------------------------------------------------


def still(colour: tuple[int, int, int], size: tuple[int, int] = (96, 160)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


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


# ----- the LoRA's base family must match the checkpoint's -------------------------------------------------------


@pytest.mark.parametrize(("family", "label"), [("tiny", "an unknown base model"), ("sdxl", "SDXL")])
def test_a_lora_of_another_family_is_refused_before_it_is_copied(
    standin: ComfyStandin, tmp_path: Path, family: str, label: str
) -> None:
    """Real ComfyUI renders such a LoRA's images without it and reports success (recordings/
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


# ----- image-to-video needs an SVD checkpoint -------------------------------------------------------------------


def test_a_non_svd_video_checkpoint_is_refused_before_anything_is_queued(standin: ComfyStandin) -> None:
    """ComfyUI lists every checkpoint for ImageOnlyCheckpointLoader and fails mid-run on a non-SVD one
    (recordings/img2vid_not_svd_checkpoint.json); the engine refuses it before uploading or queueing."""
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


# ----- deployed files do not pile up -----------------------------------------------------------------------------


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
