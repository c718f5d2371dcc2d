"""Benchmark: how close the ComfyUI engine keeps a single-worker ComfyUI to 100 % busy.

    python bench/comfy_queue.py [--images 50] [--seconds-per-image 0.1] [--in-flight 4]

Both runs go through `ComfyUIEngine` against the protocol-faithful stand-in (tests/generation/comfy_standin.py),
which renders one image at a time in a fixed time, so the ideal wall time is images x seconds per image. The
pipeline keeps `--in-flight` prompts queued and submits the next one as each finishes; the naive loop is the
same engine with one prompt in flight, i.e. submit, wait for the WebSocket, download, repeat. "Worker idle" is
the time the stand-in's worker spent waiting for work between the first start and the last finish.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `tests.generation` and the package importable

from influencer_pipeline.generation.base import GenerationRequest  # noqa: E402
from influencer_pipeline.generation.comfyui import ComfyUIEngine  # noqa: E402
from tests.generation.comfy_standin import ComfyStandin  # noqa: E402

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
GOAL = 1.05


def run_batch(standin: ComfyStandin, images: int, in_flight: int) -> tuple[float, float]:
    """Wall time of one `generate` call, and how long the worker sat idle during it."""
    engine = ComfyUIEngine(standin.url, None, CHECKPOINT, timeout_s=30, connect_timeout_s=5, max_in_flight=in_flight)
    requests = [GenerationRequest(prompt=f"bench image {index}", steps=20) for index in range(images)]
    already = set(standin.runs)
    start = time.perf_counter()
    results = engine.generate(requests)
    elapsed = time.perf_counter() - start
    assert len(results) == images, f"expected {images} images, got {len(results)}"
    runs = sorted((run for key, run in standin.runs.items() if key not in already), key=lambda run: run.started_at)
    busy = sum(run.finished_at - run.started_at for run in runs)
    return elapsed, (runs[-1].finished_at - runs[0].started_at) - busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--seconds-per-image", type=float, default=0.1)
    parser.add_argument("--in-flight", type=int, default=4)
    args = parser.parse_args()
    per_image = args.seconds_per_image
    ideal = args.images * per_image
    with tempfile.TemporaryDirectory() as scratch, ComfyStandin(Path(scratch), seconds_per_image=per_image) as standin:
        run_batch(standin, 2, args.in_flight)  # warm-up: imports, first connections
        pipeline, pipeline_idle = run_batch(standin, args.images, args.in_flight)
        naive, naive_idle = run_batch(standin, args.images, 1)
    print(
        f"comfy_queue: {args.images} images x {args.seconds_per_image:g} s on a single-worker stand-in, "
        f"{args.in_flight} in flight; worker idle: pipeline {pipeline_idle:.3f} s, naive {naive_idle:.3f} s"
    )
    print(
        f"comfy_queue: pipeline {pipeline:.2f} s / ideal {ideal:.2f} s = {pipeline / ideal:.3f} (goal <= {GOAL:g}); "
        f"naive loop {naive:.2f} s = {naive / ideal:.2f}x ideal"
    )


if __name__ == "__main__":
    main()
