"""Cross-fitting: K models, each trained on all folds but one and scored on the fold it never saw.

`cross_fit` trains and evaluates the folds into a cross-validation folder
(output_dir/cv/fold-k, each a whole run with its eval/), so `cv` reports the
metrics and `audit` reads each row's out-of-fold probabilities. `reuse` reads
back a finished folder instead, after checking that it was made from the same
rows, folds and recipe: a cv folder of other rows would give every row another
row's probabilities.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instructemo.config.schema import Config, load_config
from instructemo.data.datasets import Split
from instructemo.data.stratify import fold_indices
from instructemo.errors import UserError
from instructemo.evaluate.generate import run_generate_eval
from instructemo.run.directory import (
    CV_DIR,
    CV_SUMMARY_FILE,
    CV_SUMMARY_MD_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RunDir,
)
from instructemo.run.fileio import json_text, read_json, read_jsonl, write_atomic
from instructemo.train.sft import run_sft

log = logging.getLogger(__name__)

# Settings that change what a fold model is; a reused folder must agree on every one.
RECIPE_KEYS = ("model_name_or_path", "stage", "finetuning_type", "mode", "num_train_epochs", "learning_rate", "seed")


@dataclass
class Fold:
    """One fold: which rows it held out, the config of the model trained without them, and its metrics."""

    k: int
    rows: np.ndarray
    cfg: Config
    metrics: dict


def cv_root(cfg: Config) -> RunDir:
    return RunDir(Path(cfg.output_dir) / CV_DIR, "cv folder")


def fold_config(cfg: Config, root: Path, k: int) -> Config:
    return dataclasses.replace(
        cfg,
        output_dir=str(root / f"fold-{k}"),
        eval_output_dir=None,
        adapter_name_or_path=None,
        resume="none",
        overwrite_output_dir=False,
    )


def cross_validate(cfg: Config, data: Split, folds: int) -> tuple[list[Fold], dict]:
    """Train and evaluate every fold into output_dir/cv and publish the summary: the folds and the summary."""
    held_out = fold_indices(data, folds, cfg.seed)  # impossible folds are refused before the folder is touched
    root = cv_root(cfg)
    root.begin("cv", replace=cfg.overwrite_output_dir)
    results = cross_fit(cfg, data, held_out, root)
    summary = summarise([fold.metrics for fold in results], data.label_space.names)
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
    return results, summary


def cross_fit(cfg: Config, data: Split, held_out: list[np.ndarray], root: RunDir) -> list[Fold]:
    """Train and evaluate each fold (its held-out rows in `held_out`) into root, already begun; the folds."""
    folds = len(held_out)
    results = []
    for k, test_rows in enumerate(held_out, start=1):
        train, test = fold_splits(cfg, data, folds, k, test_rows)
        root.record(dirs=[f"fold-{k}"])
        fold_cfg = fold_config(cfg, root.path, k)
        log.info(
            "fold %d of %d: training on %d rows, evaluating on %d", k, folds, len(train.records), len(test.records)
        )
        run_sft(fold_cfg, train)
        results.append(Fold(k, test_rows, fold_cfg, run_generate_eval(fold_cfg, test)))
    return results


def fold_splits(cfg: Config, data: Split, folds: int, k: int, test_rows: np.ndarray) -> tuple[Split, Split]:
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
    return train, test


def reuse(cfg: Config, data: Split, folds: int, root: RunDir) -> list[Fold]:
    """The folds of a finished cross-validation folder, checked against these rows, folds and recipe."""
    summary = read_json(root.path / CV_SUMMARY_FILE)
    fix = "set overwrite_output_dir: true to cross-validate again, or choose another output_dir"
    if summary.get("folds") != folds or summary.get("rows") != len(data.records) or summary.get("seed") != cfg.seed:
        raise UserError(
            f"{root.path} holds a {summary.get('folds')}-fold cross-validation of {summary.get('rows')} rows "
            f"(seed {summary.get('seed')}), not {folds} folds of these {len(data.records)} rows (seed {cfg.seed}); {fix}"
        )
    results = []
    for k, test_rows in enumerate(fold_indices(data, folds, cfg.seed), start=1):
        fold_cfg = fold_config(cfg, root.path, k)
        trained = load_config(Path(fold_cfg.output_dir))
        changed = [key for key in RECIPE_KEYS if getattr(trained, key) != getattr(cfg, key)]
        if changed:
            raise UserError(
                f"{fold_cfg.output_dir} was trained with other settings ({', '.join(changed)}) than the config; {fix}"
            )
        eval_dir = fold_cfg.resolved_eval_output_dir
        predictions = read_jsonl(eval_dir / PREDICTIONS_FILE)
        expected = [data.records[i] for i in test_rows]
        if [p["text"] for p in predictions] != [r.text for r in expected]:
            raise UserError(f"{eval_dir} scored other rows than fold {k} of these {len(data.records)}; {fix}")
        if [sorted(p["gold"]) for p in predictions] != [sorted(r.labels) for r in expected]:
            raise UserError(
                f"fold {k} in {root.path} was trained and scored with other labels for these rows (the data has "
                f"changed since); {fix}"
            )
        results.append(Fold(k, test_rows, fold_cfg, read_json(eval_dir / METRICS_FILE)))
    log.info("reusing the %d-fold cross-validation in %s (same rows, folds and recipe)", folds, root.path)
    return results


def out_of_fold_probabilities(folds: list[Fold], rows: int, names: tuple[str, ...]) -> np.ndarray:
    """Each row's probabilities from the one fold model that never saw it, in the data's row order."""
    probs = np.full((rows, len(names)), np.nan)
    for fold in folds:
        predictions = read_jsonl(fold.cfg.resolved_eval_output_dir / PREDICTIONS_FILE)
        if any(p.get("probabilities") is None for p in predictions):
            raise UserError(
                f"fold {fold.k} has no probabilities (mode {fold.cfg.mode}); the audit needs them: use "
                "stage: head, or mode: score for a generative run"
            )
        probs[fold.rows] = [[p["probabilities"][n] for n in names] for p in predictions]
    if np.isnan(probs).any():
        raise RuntimeError("a row got no out-of-fold probabilities")
    return probs


SUMMARY_METRICS = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "jaccard", "exact_match", "invalid_rate", "ece")


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
