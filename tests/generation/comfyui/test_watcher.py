"""`ProgressWatcher` through the engine: WebSocket events while the socket is up, `/history` polling when it is
not or drops, and a prompt ComfyUI forgot is an error, not a wait."""

from __future__ import annotations

import pytest
import requests

from influencer_pipeline.generation.comfyui import ComfyUIError
from tests.generation.comfy_standin import ComfyStandin
from tests.generation.comfyui.support import (
    make_engine,
    our_runs,
    prompts,
    submit_foreign,
)


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


def test_a_prompt_comfyui_forgot_is_an_error_not_a_wait(standin: ComfyStandin) -> None:
    standin.seconds_per_image = 1.0
    submit_foreign(standin)

    def someone_clears_the_queue() -> bool:
        if len(our_runs(standin)) == 2 and all(run.status == "pending" for run in our_runs(standin)):
            requests.post(f"{standin.url}/queue", json={"clear": True}, timeout=2)
        return False

    with pytest.raises(ComfyUIError, match=r"no longer knows prompt .*neither queued nor in its history"):
        make_engine(standin, max_in_flight=2).generate(prompts(2), should_stop=someone_clears_the_queue)
