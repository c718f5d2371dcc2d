"""The loss-curve image recorded with every trained LoRA (Dagster shows it in the asset's metadata).

Drawn on matplotlib's object API with the Agg canvas, never pyplot: no global figure state and no GUI backend,
so it is safe in worker threads and on headless machines.
"""

from __future__ import annotations

import io


def render_loss_curve(losses: list[tuple[int, float]]) -> bytes:
    """A 600x300 PNG of loss per step, with a moving average once there are enough steps to be noisy."""
    # Imported here: matplotlib takes ~0.3 s to import, which every step process of every run would pay when it
    # loads the code location (bench/launch.py measures that start-up); only lora_weights draws.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_xlabel("step")
    axes.set_ylabel("loss (MSE)")
    axes.grid(alpha=0.3)
    if not losses:
        axes.text(0.5, 0.5, "no training steps recorded", ha="center", va="center", transform=axes.transAxes)
    else:
        steps = [step for step, _ in losses]
        values = [value for _, value in losses]
        noisy = len(losses) >= 20
        axes.plot(
            steps, values, linewidth=0.8, alpha=0.4 if noisy else 1.0, marker=None if noisy else ".", label="loss"
        )
        if noisy:
            window = max(2, len(losses) // 20)
            axes.plot(steps[window - 1 :], _moving_average(values, window), linewidth=2, label=f"mean of {window}")
            axes.legend(loc="upper right")
    axes.set_title("LoRA training loss")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` values: the trend through per-step noise (each step sees one random timestep)."""
    sums = [0.0]
    for value in values:
        sums.append(sums[-1] + value)
    return [(sums[i] - sums[i - window]) / window for i in range(window, len(sums))]
