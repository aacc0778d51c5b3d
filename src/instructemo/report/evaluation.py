"""Files a person reads: predictions, metrics, a markdown report and the loss curve.

Every file is written to a temporary name and renamed into place, so an
interrupted run never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from instructemo.errors import UserError
from instructemo.report.html import SUMMARY_KEYS, render
from instructemo.run.directory import (
    EVAL_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_HTML_FILE,
    REPORT_MD_FILE,
    SKIPPED_ROWS_FILE,
    RunDir,
    skipped_rows_text,
)
from instructemo.run.fileio import json_text, jsonl_text, write_atomic


def check_eval_dir(out_dir: Path) -> None:
    """Raise, before any model loads, if an evaluation may not be written into out_dir."""
    RunDir(out_dir, "eval_output_dir").check_can_begin("eval", replace=True)


def find_evaluation(path: Path) -> Path:
    """The finished evaluation directory that `path` names: itself, or a training run's eval/ folder."""
    is_evaluation = (path / METRICS_FILE).is_file() or (RunDir(path).manifest() or {}).get("kind") == "eval"
    eval_dir = path if is_evaluation else path / EVAL_DIR
    RunDir(eval_dir).require_complete()
    if not (eval_dir / METRICS_FILE).is_file():
        raise UserError(
            f"{path}: no metrics.json in it or in {path / EVAL_DIR}; run instructemo generate-eval on it first"
        )
    return eval_dir


def write_eval_outputs(
    out_dir: Path, rows: Iterable[dict], metrics: dict, context: dict, history: list[dict] | None = None, skipped=()
) -> None:
    """predictions.jsonl, metrics.json, report.md, report.html (and skipped_rows.jsonl) for one evaluation.

    They replace the previous evaluation in out_dir all together: staged, then
    moved into place, the folder marked complete last.
    """
    rows = list(rows)
    files = {
        PREDICTIONS_FILE: jsonl_text(rows),
        METRICS_FILE: json_text({**context, "metrics": metrics}),
        REPORT_MD_FILE: markdown_report(rows, metrics, context),
        REPORT_HTML_FILE: render(rows, metrics, context, history),
    }
    if skipped:
        files[SKIPPED_ROWS_FILE] = skipped_rows_text(skipped)
    run = RunDir(out_dir, "eval_output_dir")
    run.begin("eval", replace=True)
    run.publish(lambda staging: [write_atomic(staging / name, text) for name, text in files.items()])


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_report(rows: list[dict], metrics: dict, context: dict) -> str:
    lines = [f"# Evaluation of {context.get('model', '?')}", ""]
    if context.get("also_used_for"):
        lines += [
            f"**Not held out: these rows also served for {' and '.join(context['also_used_for'])}; "
            "the figures are optimistic.**",
            "",
        ]
    left_out = context.get("rows_left_out_by_exclusion_list")
    if left_out:
        lines += [
            f"**Not the full split: {left_out['rows']} rows were left out by the exclusion list {left_out['list']}; "
            "these figures are not comparable with figures on the whole split.**",
            "",
        ]
    lines += [f"- {k}: {v}" for k, v in context.items()]
    lines += ["", "## Summary", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(metrics[k])} |" for k in SUMMARY_KEYS if k in metrics]
    if "unflagged" in metrics:
        part = metrics["unflagged"]
        lines += ["", f"## {part['title']}", "", part["note"], "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(part[k])} |" for k in ("rows", "flagged_rows_left_out", *SUMMARY_KEYS) if k in part]
    lines += ["", "## Per class", "", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, m in metrics["per_class"].items():
        lines.append(f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    if "confusion_matrix" in metrics:
        cm = metrics["confusion_matrix"]
        lines += ["", "## Confusion matrix (rows: gold, columns: predicted)", ""]
        lines.append("| gold \\ predicted | " + " | ".join(cm["columns"]) + " |")
        lines.append("|---" * (len(cm["columns"]) + 1) + "|")
        for label, counts in zip(cm["labels"], cm["counts"]):
            lines.append(f"| {label} | " + " | ".join(str(c) for c in counts) + " |")
    if "label_confusion" in metrics:
        lines += ["", "## Per-label counts", "", "| label | TP | FP | FN | TN |", "|---|---|---|---|---|"]
        for label, c in metrics["label_confusion"].items():
            lines.append(f"| {label} | {c['tp']} | {c['fp']} | {c['fn']} | {c['tn']} |")
    invalid = [r for r in rows if r["predicted"] is None]
    if invalid:
        lines += ["", f"## Invalid answers (first {min(10, len(invalid))} of {len(invalid)})", ""]
        lines += [f"- {json.dumps(r['generation'])} for gold {r['gold']}" for r in invalid[:10]]
    return "\n".join(lines) + "\n"
