"""`instructemo cv CONFIG.yaml --folds K`: K-fold cross-validation of the whole recipe.

The training rows are split into K folds, stratified so every fold has about
the same share of each label: scikit-learn's StratifiedKFold for single-label
data, iterative stratification (Sechidis et al. 2011, the
`iterative-stratification` package) for multi-label data, where plain
stratification cannot see label combinations. Each fold trains on the other
K-1 folds into output_dir/cv/fold-k and is evaluated on its held-out rows; the
summary gives every metric's mean and standard deviation over the folds.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from instructemo.config.schema import Config
from instructemo.data.datasets import load_run_split
from instructemo.data.stratify import fold_indices
from instructemo.evaluate.generate import run_generate_eval
from instructemo.run.directory import CV_DIR, CV_SUMMARY_FILE, CV_SUMMARY_MD_FILE, RunDir
from instructemo.run.fileio import json_text, write_atomic
from instructemo.train.sft import run_sft

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "jaccard", "exact_match", "invalid_rate", "ece")


def run_cv(cfg: Config, folds: int) -> dict:
    data = load_run_split(cfg, "train", max_samples=cfg.max_samples)
    held_out = fold_indices(data, folds, cfg.seed)
    root = RunDir(Path(cfg.output_dir) / CV_DIR, "cv folder")
    root.begin("cv", replace=cfg.overwrite_output_dir)
    results = []
    for k, test_rows in enumerate(held_out, start=1):
        chosen = set(test_rows.tolist())
        train = dataclasses.replace(
            data,
            records=[r for i, r in enumerate(data.records) if i not in chosen],
            origin=f"{data.origin}, folds other than {k}",
        )
        test = dataclasses.replace(
            data,
            name=f"{cfg.dataset} fold {k} of {folds}",
            records=[data.records[i] for i in test_rows],
            origin=f"{data.origin}, fold {k}",
        )
        root.record(dirs=[f"fold-{k}"])
        fold_cfg = dataclasses.replace(
            cfg,
            output_dir=str(root.path / f"fold-{k}"),
            eval_output_dir=None,
            adapter_name_or_path=None,
            resume="none",
            overwrite_output_dir=False,
        )
        log.info(
            "fold %d of %d: training on %d rows, evaluating on %d", k, folds, len(train.records), len(test.records)
        )
        run_sft(fold_cfg, train)
        metrics = run_generate_eval(fold_cfg, test)
        results.append(metrics)
    summary = summarise(results, data.label_space.names)
    summary.update(
        {
            "folds": folds,
            "rows": len(data.records),
            "dataset": cfg.dataset,
            "seed": cfg.seed,
            "stratification": "iterative (multi-label)" if data.label_space.multi_label else "stratified",
        }
    )
    root.publish(
        lambda staging: (
            write_atomic(staging / CV_SUMMARY_FILE, json_text(summary)),
            write_atomic(staging / CV_SUMMARY_MD_FILE, summary_markdown(summary)),
        )
    )
    print(summary_markdown(summary))
    return summary


def summarise(results: list[dict], names) -> dict:
    """Mean and standard deviation over folds of each metric and of each label's F1."""

    def stats(values):
        return {
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "folds": [float(v) for v in values],
        }

    metrics = {m: stats([r[m] for r in results]) for m in SUMMARY_METRICS if all(m in r for r in results)}
    per_label = {n: stats([r["per_class"][n]["f1"] for r in results]) for n in names}
    return {"metrics": metrics, "per_label_f1": per_label}


def summary_markdown(summary: dict) -> str:
    lines = [
        f"# {summary['folds']}-fold cross-validation of {summary['dataset']} ({summary['rows']} rows, {summary['stratification']})",
        "",
        "| metric | mean | std |",
        "|---|---|---|",
    ]
    lines += [f"| {m} | {v['mean']:.4f} | {v['std']:.4f} |" for m, v in summary["metrics"].items()]
    lines += ["", "| label | F1 mean | F1 std |", "|---|---|---|"]
    lines += [f"| {n} | {v['mean']:.4f} | {v['std']:.4f} |" for n, v in summary["per_label_f1"].items()]
    return "\n".join(lines) + "\n"
