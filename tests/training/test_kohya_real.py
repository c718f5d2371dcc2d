"""Re-check the kohya trainer against a real sd-scripts install (opt-in; about 6 minutes on 2 CPU cores).

The recorded facts in recordings/ hold the fake and the parsers to sd-scripts 48d368f. This test runs the same
production code against the real program, so an sd-scripts upgrade can be checked before it is deployed:

    KOHYA_REAL_SD_SCRIPTS=/path/to/sd-scripts KOHYA_REAL_ACCELERATE=/path/to/venv/bin/accelerate \\
    KOHYA_REAL_BASE_MODEL=/path/to/sd15.safetensors KOHYA_TOKENIZER_CACHE_DIR=/path/to/tokenizers \\
    .venv/bin/pytest tests/training/test_kohya_real.py

(recordings/README.md says how a random SD 1.5 checkpoint and an offline tokenizer were made for it). It is skipped
without those variables: sd-scripts needs its own venv (torch, pinned transformers) and a 2 GB checkpoint, which
neither CI nor a developer machine has by default.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from PIL import Image

from influencer_pipeline.defs.training.assets import progress_logger
from influencer_pipeline.training.base import TrainingProgress, TrainingRequest
from influencer_pipeline.training.kohya import KohyaTrainer, KohyaTrainingError
from influencer_pipeline.training.presets import load_preset

REAL = {name: os.environ.get(name, "") for name in ("KOHYA_REAL_SD_SCRIPTS", "KOHYA_REAL_ACCELERATE")}
REAL |= {name: os.environ.get(name, "") for name in ("KOHYA_REAL_BASE_MODEL", "KOHYA_TOKENIZER_CACHE_DIR")}
pytestmark = pytest.mark.skipif(
    not all(REAL.values()), reason=f"opt-in: set {', '.join(REAL)} to run against a real sd-scripts"
)


def kill_training_in(epoch: int, report: object) -> object:
    """A progress callback that SIGKILLs the training process (not accelerate) in `epoch`, as the OOM killer does."""

    def progress(p: TrainingProgress) -> None:
        report(p)  # type: ignore[operator]
        if p.epoch == epoch and p.step > (epoch - 1) * 2:
            for proc in psutil.process_iter(["cmdline"]):
                cmd = proc.info["cmdline"] or []
                if len(cmd) > 1 and cmd[1].endswith("train_network.py"):
                    proc.kill()

    return progress


@pytest.mark.slow
def test_killed_twice_resumed_twice_each_epoch_trained_once(tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for i in range(2):
        Image.new("RGB", (128, 128), (60 * i + 40, 90, 140)).save(dataset / f"ava_{i:02d}.png")
        (dataset / f"ava_{i:02d}.txt").write_text(f"ohwx, a woman, photo {i}\n", encoding="utf-8")
    overrides = {"resolution": 128, "epochs": 3, "batch_size": 1, "repeats": 1, "mixed_precision": "no"}
    overrides |= {"gradient_checkpointing": False, "base_model": REAL["KOHYA_REAL_BASE_MODEL"]}
    request = TrainingRequest("ava", dataset, tmp_path / "out", load_preset("sd15-standard", overrides), "ava")
    trainer = KohyaTrainer(
        Path(REAL["KOHYA_REAL_SD_SCRIPTS"]),
        accelerate=REAL["KOHYA_REAL_ACCELERATE"],
        python_env={"HF_HUB_OFFLINE": "1"},
        tokenizer_cache_dir=Path(REAL["KOHYA_TOKENIZER_CACHE_DIR"]),
        device="cpu",
    )
    lines: list[str] = []
    for epoch in (2, 3):
        with pytest.raises(KohyaTrainingError) as err:
            trainer.train(request, kill_training_in(epoch, progress_logger(lines.append)))
        assert err.value.retryable and "killed from outside (SIGKILL)" in err.value.hint
    result = trainer.train(request, progress_logger(lines.append))
    assert result.resumed_from == str(request.output_dir.resolve() / "ava-000002-state")
    assert [step for step, _ in result.losses] == [5, 6]  # only epoch 3: epoch 2 was not trained again
    assert (result.steps, result.epochs) == (6, 3)
    assert [p.name for p in result.checkpoints] == ["ava-000001.safetensors", "ava-000002.safetensors"]
    assert not list(request.output_dir.glob("*-state"))
    assert all(line.count("epoch") == 1 for line in lines)
