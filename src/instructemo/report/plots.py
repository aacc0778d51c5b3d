"""Figures, with one matplotlib set-up: headless (Agg), written atomically or embedded in HTML.

loss.png (training), report.html's charts and compare's per-class bars draw here.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend, which needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_points(log_history: list[dict]) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]


def loss_figure(log_history: list[dict]):
    """Training loss against optimizer step (for loss.png and report.html)."""
    points = loss_points(log_history)
    fig, ax = pyplot().subplots(figsize=(6, 3.5), dpi=110)
    if points:
        ax.plot(*zip(*points), marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_loss(log_history: list[dict], path: Path) -> None:
    """The loss curve written as loss.png."""
    save_figure(loss_figure(log_history), path)


def save_figure(fig, path: Path) -> None:
    """The figure written as a PNG under a temporary name, then renamed into place; the figure is closed."""
    temp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(temp)
    pyplot().close(fig)
    os.replace(temp, path)


def png_data_uri(fig) -> str:
    """The figure as a PNG data URI, for a self-contained HTML page; the figure is closed."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
