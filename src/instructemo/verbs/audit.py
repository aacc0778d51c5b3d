"""`instructemo audit CONFIG --folds K --split train|test|all`: find the rows whose labels look wrong.

Every row needs probabilities from a model that never saw its label. Training
rows get them out of fold, from the `cv` machinery (train/folds.py: K models,
each trained without one fold; a finished cv folder of the same rows and recipe
is reused). Test rows get the mean of those K models, none of which trained on
them, so the test labels play no part in any training and the training rows'
flags never depend on them.

Confident learning (Northcutt et al. 2021, the `cleanlab` package) then flags
the rows whose given label the probabilities contradict: `find_label_issues`
for single-label data, `cleanlab.multilabel_classification` for multi-label
data. The audit folder holds issues.csv (the flagged rows, worst first; it is
also an exclusion list a registry entry can name with `exclude_ids:` once
reviewed), summary.json (rows, flags and the estimated noise per class) and
audit.html. `--write-clean FILE` writes the training rows without the flagged
ones, or with the suggested labels (`--relabel`): fixing is the user's choice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instructemo.config.schema import Config
from instructemo.data.datasets import Split, load_run_split, run_spec
from instructemo.data.exclusions import row_id
from instructemo.data.labels import LabelSpace
from instructemo.data.splits import is_training_split
from instructemo.errors import UserError
from instructemo.evaluate.metrics import score
from instructemo.infer.classifier import Classifier
from instructemo.report.html import render_audit
from instructemo.run.directory import (
    AUDIT_DIR,
    AUDIT_HTML_FILE,
    AUDIT_ISSUES_FILE,
    AUDIT_SUMMARY_FILE,
    RunDir,
)
from instructemo.run.fileio import csv_text, file_digest, json_text, jsonl_text, write_atomic
from instructemo.train.folds import Fold, cross_validate, cv_root, out_of_fold_probabilities, reuse

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")
ISSUE_COLUMNS = ("rank", "split", "id", "source", "text", "given", "suggested", "self_confidence")
# Below this out-of-fold accuracy many flags are the audit model's own mistakes: the summary says so.
WEAK_MODEL_ACCURACY = 0.7


@dataclass
class Part:
    """One audited split: its rows, their held-out probabilities, and what cleanlab made of them."""

    role: str  # train or test
    split: Split
    probs: np.ndarray
    how: str  # where the probabilities come from
    flagged: np.ndarray | None = None  # bool per row
    quality: np.ndarray | None = None  # cleanlab's label quality (self-confidence), per row
    suggested: list[tuple[str, ...]] | None = None
    estimates: dict | None = None


def run_audit(
    cfg: Config, folds: int = 5, split: str = "train", write_clean: str | None = None, relabel: bool = False
) -> dict:
    cleanlab_version = _cleanlab()
    started = time.perf_counter()
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: choose train, test or all")
    if relabel and write_clean is None:
        raise UserError("--relabel says how --write-clean fixes the flagged rows; give --write-clean FILE too")
    if write_clean is not None and split == "test":
        raise UserError("--write-clean writes the training file without its flagged rows: audit --split train or all")
    if cfg.stage == "sft" and cfg.mode != "score":
        raise UserError(
            "the audit needs each row's label probabilities, which a generative run gives in score mode: add mode=score"
        )
    audit = RunDir(Path(cfg.output_dir) / AUDIT_DIR, "audit folder")
    audit.check_can_begin("audit", replace=cfg.overwrite_output_dir)
    train = load_run_split(cfg, "train", max_samples=cfg.max_samples)
    space = train.label_space
    clean_path = _check_clean_target(write_clean, space, train) if write_clean is not None else None
    test = None
    if split in ("test", "all"):
        spec = run_spec(cfg, "eval")
        if is_training_split(cfg, spec, "test"):
            raise UserError(f"eval_dataset {spec} is the training split; audit --split train, or name a test split")
        test = load_run_split(cfg, "eval", label_space=space, max_samples=cfg.max_eval_samples)
    root = cv_root(cfg)
    reused = root.is_complete() and not cfg.overwrite_output_dir
    fold_runs = reuse(cfg, train, folds, root) if reused else cross_validate(cfg, train, folds)[0]
    parts = []
    if split in ("train", "all"):
        probs = out_of_fold_probabilities(fold_runs, len(train.records), space.names)
        parts.append(
            Part("train", train, probs, f"out of fold: each row scored by the one of {folds} models not trained on it")
        )
    if test is not None:
        probs = _mean_of_fold_models(fold_runs, test)
        parts.append(Part("test", test, probs, f"the mean of the {folds} fold models, none trained on these rows"))
    for part in parts:
        _find_issues(part, space)
    seconds = time.perf_counter() - started
    summary = {
        "audit": {
            "dataset": cfg.dataset,
            "model": cfg.model_name_or_path,
            "stage": cfg.stage,
            "mode": cfg.mode if cfg.stage == "sft" else "head",
            "folds": folds,
            "seed": cfg.seed,
            "cv_folder": str(root.path.resolve()),
            "cv_reused": reused,
            "method": "confident learning: cleanlab "
            + (
                "multilabel_classification.find_label_issues"
                if space.multi_label
                else "filter.find_label_issues (prune_by_noise_rate)"
            ),
            "cleanlab": cleanlab_version,
            "multi_label": space.multi_label,
            "labels": list(space.names),
        },
        "splits": {part.role: _split_summary(part, space) for part in parts},
        "seconds": round(seconds, 1),
        "rows_per_second": round(sum(len(p.split.records) for p in parts) / seconds, 2),
    }
    issues = _issue_rows(parts, space)
    audit.begin("audit", replace=cfg.overwrite_output_dir)
    audit.publish(
        lambda staging: (
            write_atomic(staging / AUDIT_ISSUES_FILE, csv_text(issues, ISSUE_COLUMNS)),
            write_atomic(staging / AUDIT_SUMMARY_FILE, json_text(summary)),
            write_atomic(staging / AUDIT_HTML_FILE, render_audit(summary, issues)),
        )
    )
    for role, figures in summary["splits"].items():
        log.info(
            "%s: %d of %d rows flagged (%.1f%%); the audit's model, held out, classifies %.1f%% of them as labelled",
            role,
            figures["flagged"],
            figures["rows"],
            100 * figures["flagged_share"],
            100 * figures["held_out_accuracy"],
        )
    log.info("wrote %s (issues.csv, summary.json, audit.html) in %.0f s", audit.path, seconds)
    if clean_path is not None:
        part = next(p for p in parts if p.role == "train")
        write_atomic(clean_path, _clean_text(part, clean_path, relabel))
        kept = len(part.split.records) - (0 if relabel else int(part.flagged.sum()))
        log.info(
            "wrote %s: %d training rows, %d flagged rows %s; train on it with dataset: %s (for a reviewed, "
            "reproducible cleaning, name a reviewed issues.csv with exclude_ids: in the dataset's registry entry)",
            clean_path,
            kept,
            int(part.flagged.sum()),
            "relabelled with the suggestion" if relabel else "left out",
            clean_path,
        )
    return summary


def _cleanlab() -> str:
    try:
        import cleanlab
    except ModuleNotFoundError:
        raise UserError("instructemo audit needs cleanlab: pip install 'instructemo[audit]'") from None
    return cleanlab.__version__


def _check_clean_target(write_clean: str, space: LabelSpace, train: Split) -> Path:
    """--write-clean's file: new (never a user's file replaced), of a format that keeps the labels."""
    path = Path(write_clean).expanduser()
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"--write-clean {write_clean}: write a .csv or .jsonl file")
    if path.suffix.lower() == ".csv" and space.multi_label:
        raise UserError(
            f"--write-clean {write_clean}: multi-label rows keep their label lists in .jsonl; use a .jsonl name"
        )
    if path.exists():
        raise UserError(f"--write-clean {write_clean} already exists; choose a new file name (it is never replaced)")
    if not path.parent.is_dir():
        raise UserError(f"--write-clean {write_clean}: folder {path.parent} does not exist; create it first")
    if train.file is not None and path.resolve() == Path(train.file):
        raise UserError(
            f"--write-clean {write_clean} is the training file itself; write the cleaned rows to a new file"
        )
    return path


def _mean_of_fold_models(folds: list[Fold], test: Split) -> np.ndarray:
    texts = [r.text for r in test.records]
    total = np.zeros((len(texts), len(test.label_space.names)))
    for fold in folds:
        log.info("scoring the %d %s rows with fold %d's model", len(texts), test.name, fold.k)
        result = Classifier(fold.cfg).load(progress=False).classify(texts)
        if result.probabilities is None:
            raise UserError(f"fold {fold.k} gives no probabilities; use stage: head, or mode: score")
        total += np.asarray(result.probabilities, dtype=float)
    return total / len(folds)


def _find_issues(part: Part, space: LabelSpace) -> None:
    names = list(space.names)
    if space.multi_label:
        from cleanlab.multilabel_classification.dataset import common_multilabel_issues
        from cleanlab.multilabel_classification.filter import find_label_issues
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        given = [[names.index(label) for label in r.labels] for r in part.split.records]
        part.flagged = find_label_issues(labels=given, pred_probs=part.probs)
        part.quality = get_label_quality_scores(given, part.probs)
        part.suggested = [tuple(n for n, p in zip(names, row) if p >= 0.5) for row in part.probs]
        table = common_multilabel_issues(labels=given, pred_probs=part.probs)
        noise = {n: {} for n in names}
        for row in table.to_dict("records"):
            key = "given_but_likely_absent" if row["In Given Label"] else "absent_but_likely_present"
            noise[names[int(row["Class Index"])]][key] = round(float(row["Issue Probability"]), 6)
        part.estimates = {"per_label_issue_probability": noise}
    else:
        from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        given = np.array([names.index(r.labels[0]) for r in part.split.records])
        part.flagged = find_label_issues(labels=given, pred_probs=part.probs)
        part.quality = get_label_quality_scores(given, part.probs, method="self_confidence")
        part.suggested = [(names[i],) for i in part.probs.argmax(axis=1)]
        _, noise, _, joint = estimate_py_and_noise_matrices_from_probabilities(given, part.probs)
        part.estimates = {
            # noise_matrix[given][true] = P(label given | true label): each true label's column sums to 1.
            "noise_matrix": {
                g: {t: round(float(noise[i, j]), 6) for j, t in enumerate(names)} for i, g in enumerate(names)
            },
            # confident_joint[given][true]: rows counted confidently as each true label, by the label they were given.
            "confident_joint": {g: {t: int(joint[i, j]) for j, t in enumerate(names)} for i, g in enumerate(names)},
        }


def _split_summary(part: Part, space: LabelSpace) -> dict:
    records = part.split.records
    gold = [r.labels for r in records]
    metrics = score(gold, part.suggested, space, part.probs)
    per_class = {}
    for name in space.names:
        rows = [i for i, r in enumerate(records) if name in r.labels]
        flagged = int(part.flagged[rows].sum()) if rows else 0
        per_class[name] = {
            "rows": len(rows),
            "flagged": flagged,
            "flagged_share": round(flagged / len(rows), 6) if rows else 0.0,
        }
    flagged_rows = np.flatnonzero(part.flagged)
    given_vs_suggested = {n: {m: 0 for m in space.names} for n in space.names}
    if not space.multi_label:
        for i in flagged_rows:
            given_vs_suggested[records[i].labels[0]][part.suggested[i][0]] += 1
    accuracy = metrics["jaccard"] if space.multi_label else metrics["accuracy"]
    summary = {
        "split": part.split.name,
        "file": part.split.file,
        "sha256": file_digest(Path(part.split.file)) if part.split.file else None,
        "origin": part.split.origin,
        "rows": len(records),
        "flagged": int(part.flagged.sum()),
        "flagged_share": round(float(part.flagged.mean()), 6),
        "probabilities": part.how,
        # How well the audit's model reads these rows without having trained on them: a weak one flags its own errors.
        "held_out_accuracy": round(float(accuracy), 6),
        "held_out_macro_f1": round(float(metrics["macro_f1"]), 6),
        "per_class": per_class,
        **part.estimates,
    }
    if not space.multi_label:
        summary["given_vs_suggested"] = given_vs_suggested
    if accuracy < WEAK_MODEL_ACCURACY:
        summary["warning"] = (
            f"the audit's model scores only {accuracy:.2f} on these rows held out: many flags may be its own "
            "mistakes; audit with a stronger recipe (more epochs, a larger model) before removing rows"
        )
        log.warning("%s: %s", part.role, summary["warning"])
    return summary


def _issue_rows(parts: list[Part], space: LabelSpace) -> list[dict]:
    """The flagged rows of every part, the least likely labels first."""
    rows = []
    for part in parts:
        for i in np.flatnonzero(part.flagged):
            record = part.split.records[i]
            rows.append(
                {
                    "split": part.split.name,
                    "id": row_id(record),
                    "source": record.source,
                    "text": record.text,
                    "given": ", ".join(record.labels) or space.none_word,
                    "suggested": ", ".join(part.suggested[i]) or space.none_word,
                    "self_confidence": round(float(part.quality[i]), 6),
                }
            )
    rows.sort(key=lambda r: r["self_confidence"])
    return [{"rank": k, **row} for k, row in enumerate(rows, start=1)]


def _clean_text(part: Part, path: Path, relabel: bool) -> str:
    """The training rows, the flagged ones left out or relabelled, as CSV (text,label[,id]) or JSONL."""
    multi_label = part.split.label_space.multi_label
    rows = []
    for record, flagged, suggested in zip(part.split.records, part.flagged, part.suggested):
        if flagged and not relabel:
            continue
        labels = suggested if flagged else record.labels
        rows.append({"text": record.text, "label": list(labels) if multi_label else labels[0], "id": record.id})
    if not any(row["id"] is not None for row in rows):
        rows = [{"text": row["text"], "label": row["label"]} for row in rows]
    if path.suffix.lower() == ".jsonl":
        return jsonl_text(rows)
    return csv_text(rows, ["text", "label", "id"] if rows and "id" in rows[0] else ["text", "label"])
