"""`instructemo compare RUN_DIR ...`: runs side by side, from the files every run writes.

A run is a training output_dir with an evaluation in it (output_dir/eval), or
an evaluation directory itself (the one holding metrics.json). Generative (sft)
and classification-head (head) runs write the same files, so they compare
directly: the table, compare.json, and a per-class F1 bar chart.
"""

from __future__ import annotations

import logging
from pathlib import Path

from instructemo.config.schema import renamed
from instructemo.errors import UserError
from instructemo.evaluate.metrics import headline_metric, is_multi_label
from instructemo.report.evaluation import find_evaluation
from instructemo.report.plots import pyplot, save_figure
from instructemo.run.directory import (
    COMPARE_JSON_FILE,
    COMPARE_MD_FILE,
    COMPARE_PLOT_FILE,
    METRICS_FILE,
    TRAIN_RESULTS_FILE,
    RunDir,
)
from instructemo.run.fileio import json_text, read_json, write_atomic

log = logging.getLogger(__name__)


def load_run(path: Path) -> dict:
    """One run's figures: metrics from its evaluation, time and parameters from its training."""
    eval_dir = find_evaluation(path)
    evaluation = read_json(eval_dir / METRICS_FILE)
    run_dir = Path(evaluation["adapter"]) if evaluation.get("adapter") else (path if eval_dir != path else path.parent)
    RunDir(run_dir).require_complete()
    train = {}
    if (run_dir / TRAIN_RESULTS_FILE).is_file():
        train = read_json(run_dir / TRAIN_RESULTS_FILE)
    m = evaluation["metrics"]
    multi_label = is_multi_label(evaluation)
    # An older run says cls where a run now says head (its stage, and its evaluation's mode).
    mode = renamed("stage", evaluation.get("mode"), say=False)
    return {
        "run": str(path),
        "name": path.name if eval_dir != path else f"{path.parent.name}/{path.name}",
        "stage": renamed("stage", train.get("stage"), say=False)
        or {"head": "head", "ensemble": "ensemble"}.get(mode, "sft"),
        "mode": mode,
        "multi_label": multi_label,
        "n": m["n"],
        "accuracy": m.get("accuracy"),
        "jaccard": m.get("jaccard"),
        "macro_f1": m["macro_f1"],
        "micro_f1": m["micro_f1"],
        "invalid_rate": m["invalid_rate"],
        "ece": m.get("ece"),
        "per_class_f1": {name: v["f1"] for name, v in m["per_class"].items()},
        "train_seconds": train.get("train_seconds"),
        "train_examples_per_second": train.get("train_examples_per_second"),
        "eval_examples_per_second": evaluation.get("examples_per_second"),
        "trainable_parameters": train.get("trainable_parameters"),
    }


def compare_runs(paths: list[Path], output: Path) -> list[dict]:
    """Read every run, then write compare.md, compare.json and per_class_f1.png into output; returns the rows."""
    if not paths:
        raise UserError("compare needs at least one run directory: instructemo compare RUN_DIR [RUN_DIR ...]")
    runs = [load_run(p) for p in paths]
    if len({r["multi_label"] for r in runs}) > 1:
        raise UserError("compare: the runs mix single-label and multi-label evaluations; compare runs on the same data")
    labels = list(runs[0]["per_class_f1"])
    for r in runs[1:]:
        if list(r["per_class_f1"]) != labels:
            raise UserError(
                f"compare: {r['run']} has other labels than {runs[0]['run']}; compare runs on the same label space"
            )
    if len({r["n"] for r in runs}) > 1:
        log.warning(
            "the runs were evaluated on different numbers of rows (%s); their figures are not strictly comparable",
            ", ".join(str(r["n"]) for r in runs),
        )
    table = render_table(runs, labels)
    print(table)
    destination = RunDir(output, "--output")
    destination.begin("compare", replace=True)

    def write(staging: Path) -> None:
        write_atomic(staging / COMPARE_MD_FILE, table + "\n")
        write_atomic(staging / COMPARE_JSON_FILE, json_text(runs) + "\n")
        plot_per_class_f1(runs, labels, staging / COMPARE_PLOT_FILE)

    destination.publish(write)
    log.info("wrote compare.md, compare.json and per_class_f1.png to %s", output)
    return runs


def _cell(value, spec: str = ".4f") -> str:
    if value is None:
        return "–"
    return (
        format(value, spec)
        if isinstance(value, float)
        else format(value, ",")
        if isinstance(value, int)
        else str(value)
    )


def render_table(runs: list[dict], labels: list[str]) -> str:
    """A markdown table: one row per run, overall metrics, cost, then each class's F1."""
    headline = headline_metric(runs[0]["multi_label"])
    header = [
        "run",
        "stage",
        "mode",
        headline,
        "macro F1",
        "micro F1",
        "invalid",
        "train s",
        "train ex/s",
        "eval ex/s",
        "trainable params",
        *(f"F1 {n}" for n in labels),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in runs:
        cells = [
            r["name"],
            r["stage"],
            r["mode"],
            _cell(r[headline]),
            _cell(r["macro_f1"]),
            _cell(r["micro_f1"]),
            f"{100 * r['invalid_rate']:.1f}%",
            _cell(r["train_seconds"], ".0f"),
            _cell(r["train_examples_per_second"], ".2f"),
            _cell(r["eval_examples_per_second"], ".2f"),
            _cell(r["trainable_parameters"]),
            *(_cell(r["per_class_f1"][n], ".3f") for n in labels),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_per_class_f1(runs: list[dict], labels: list[str], path: Path) -> None:
    """Grouped bars: for each class, one bar per run."""
    import numpy as np

    plt = pyplot()

    x = np.arange(len(labels))
    width = 0.8 / len(runs)
    rows_of_legend = -(-len(runs) // 3)
    fig, ax = plt.subplots(
        figsize=(max(6, 0.9 * len(labels) * max(1, len(runs) / 2)), 4 + 0.25 * rows_of_legend), dpi=110
    )
    for k, r in enumerate(runs):
        name = f"{r['name']} ({r['stage']})" if r["mode"] == r["stage"] else f"{r['name']} ({r['stage']}, {r['mode']})"
        ax.bar(x + (k - (len(runs) - 1) / 2) * width, [r["per_class_f1"][n] for n in labels], width, label=name)
    ax.set_xticks(x, labels, rotation=45 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("Per-class F1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1 if len(labels) <= 8 else -0.25),
        ncol=min(3, len(runs)),
    )
    fig.tight_layout()
    save_figure(fig, path)
