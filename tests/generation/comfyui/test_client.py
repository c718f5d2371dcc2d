"""`ComfyUIClient` through the engine: transport failures end in an error that says what to check, or in a
successful retry, never a hang; `/object_info` option lists are read in both shapes."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from influencer_pipeline.errors import InputError
from influencer_pipeline.generation.comfyui import ComfyUIEngine, ComfyUIError
from influencer_pipeline.generation.comfyui.client import combo_options
from tests.generation.comfy_standin import ComfyStandin
from tests.generation.comfyui.support import (
    SD15,
    make_engine,
    prompts,
)

# ----- transport failures --------------------------------------------------------------------------------------------


def test_invalid_url_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="COMFYUI_URL"):
        ComfyUIEngine("localhost:8188", tmp_path, SD15)


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


# ----- object_info ---------------------------------------------------------------------------------------------------


def test_combo_options_reads_both_object_info_shapes() -> None:
    v1 = {"input": {"required": {"lora_name": [["a.safetensors", "sub/b.safetensors"], {"tooltip": "…"}]}}}
    v3 = {"input": {"required": {"lora_name": ["COMBO", {"options": ["a.safetensors"]}]}}}
    assert combo_options(v1, "LoraLoader", "lora_name") == ["a.safetensors", "sub/b.safetensors"]
    assert combo_options(v3, "LoraLoader", "lora_name") == ["a.safetensors"]
    with pytest.raises(ComfyUIError, match="no option list"):
        combo_options({"input": {"required": {}}}, "LoraLoader", "lora_name")
