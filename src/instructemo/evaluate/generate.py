"""`instructemo generate-eval`: run the model on a labelled split, score it and report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from instructemo.config.schema import Config, load_config
from instructemo.data.datasets import Split, load_run_split, run_spec, split_source
from instructemo.data.exclusions import audit_flags
from instructemo.data.recorded import check_split_is_the_runs
from instructemo.data.splits import is_training_split
from instructemo.errors import UserError
from instructemo.evaluate.metrics import headline_metric, score
from instructemo.infer.classifier import Classifier
from instructemo.report.evaluation import check_eval_dir, write_eval_outputs
from instructemo.run.directory import CONFIG_FILE, SELECTION_FILE, THRESHOLDS_FILE, TRAINER_LOG_FILE, RunDir
from instructemo.run.fileio import read_json, read_jsonl

log = logging.getLogger(__name__)


def tuning_uses(classifier: Classifier, split: Split) -> list[str]:
    """What the run tuned on these same rows: checkpoint selection, and the calibrated thresholds in use."""
    adapter, source, uses = classifier.adapter, split_source(split), []
    if adapter is None:
        return uses
    if (adapter / SELECTION_FILE).is_file() and read_json(adapter / SELECTION_FILE).get("data") == source:
        uses.append("checkpoint selection (select_best)")
    record = classifier.threshold_record()
    if record and record["source"] == "calibrated" and read_json(adapter / THRESHOLDS_FILE).get("data") == source:
        uses.append("threshold calibration")
    return uses


def training_overlap(adapter: Path | None, texts: list[str], eval_spec: str) -> dict | None:
    """How the evaluated texts meet the rows the run in `adapter` was trained on, by the run's own saved config:
    whether they are its training split, and which of them it trained on (None: a base model, or unreadable)."""
    if adapter is None or not (adapter / CONFIG_FILE).is_file():
        return None
    try:
        trained = load_config(adapter)
        training = load_run_split(trained, "train", max_samples=trained.max_samples)
        check_split_is_the_runs(adapter, "train", trained.dataset, training)
        same_split = is_training_split(trained, eval_spec, "test")
    except UserError as exc:
        log.warning("the run's training rows could not be read to check them against the evaluated rows: %s", exc)
        return None
    seen = {_normal(r.text) for r in training.records}
    return {"same_split": same_split, "in_training": [_normal(t) in seen for t in texts]}


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def unflagged_figures(split: Split, result, flagged: tuple[set[int], str], audit: Path) -> dict:
    """The metrics on the rows an audit did not flag: a second figure, never the benchmark one."""
    left_out, name = flagged
    keep = [i for i in range(len(split.records)) if i not in left_out]
    probs = result.probabilities[keep] if result.probabilities is not None else None
    figures = score([split.records[i].labels for i in keep], [result.labels[i] for i in keep], split.label_space, probs)
    return {
        "title": f"Unflagged rows only: {len(keep)} of {len(split.records)}",
        "note": (
            f"Scored on the {len(keep)} rows of split {name} that the audit in {audit} did not flag; the "
            f"{len(left_out)} flagged rows are left out. The figure on all rows above is the benchmark figure; "
            "this one shows how much of the error may be the labels."
        ),
        "audit": str(audit.resolve()),
        "rows": len(keep),
        "flagged_rows_left_out": len(left_out),
        **{k: v for k, v in figures.items() if not isinstance(v, dict)},
    }


def check_shots_held_apart(cfg: Config, eval_spec: str) -> None:
    """few_shot examples come from the training split: it may not be the split being judged."""
    if is_training_split(cfg, eval_spec, "test"):
        raise UserError(
            f"few_shot draws its examples from dataset {cfg.dataset}, the split being evaluated ({eval_spec}); "
            "evaluate on a test split, or set dataset to the rows the examples may come from"
        )


def run_generate_eval(cfg: Config, split: Split | None = None, unflagged: Path | None = None) -> dict:
    """Evaluate on cfg.eval_dataset (or the rows of `split`) and write predictions, metrics and a report.

    `unflagged`: an audit folder of this split; the rows it did not flag are also scored, reported beside the
    full figure (metrics["unflagged"]), labelled as such, never in its place.
    """
    classifier = Classifier(cfg)
    space = classifier.space
    # A split handed in (a cross-validation fold, a tune trial's dev rows) is checked by its caller.
    by_spec = split is None
    if split is None:
        eval_spec = run_spec(cfg, "eval")
        if classifier.shot_pool is not None:
            check_shots_held_apart(cfg, eval_spec)
        split = load_run_split(cfg, "eval", label_space=space, max_samples=cfg.max_eval_samples)
        check_split_is_the_runs(classifier.adapter, "eval", eval_spec, split)
    else:
        eval_spec = split.name
    out_dir = cfg.resolved_eval_output_dir
    check_eval_dir(out_dir)
    flagged = audit_flags(unflagged, split.records, split.file) if unflagged is not None else None
    classifier.load()
    started = time.perf_counter()
    texts = [r.text for r in split.records]
    result = classifier.classify(texts)
    seconds = time.perf_counter() - started
    metrics = score([r.labels for r in split.records], result.labels, space, result.probabilities)
    if flagged is not None:
        metrics["unflagged"] = unflagged_figures(split, result, flagged, unflagged)
    rows = []
    for i, (record, labels) in enumerate(zip(split.records, result.labels)):
        row = {
            "id": record.id,
            "source": record.source,
            "text": record.text,
            "gold": list(record.labels),
            "generation": result.answers[i] if result.answers is not None else None,
            "predicted": list(labels) if labels is not None else None,
        }
        if result.probabilities is not None:
            row["probabilities"] = {n: round(float(p), 6) for n, p in zip(space.names, result.probabilities[i])}
        rows.append(row)
    if result.unfinished:
        log.warning(
            "%d of %d answers reached max_new_tokens=%d before the model ended its turn: they may be cut "
            "short; raise max_new_tokens",
            result.unfinished,
            len(rows),
            cfg.max_new_tokens,
        )
    reused = tuning_uses(classifier, split)
    overlap = training_overlap(classifier.adapter, texts, eval_spec) if by_spec else None
    in_training = sum(overlap["in_training"]) if overlap else None
    if overlap and overlap["same_split"]:
        reused.insert(0, "training")
    elif in_training:
        log.warning(
            "%d of the %d evaluated texts also appear among the run's training rows: on those the model "
            "may recall rather than read; their share is in metrics.json (texts_in_training)",
            in_training,
            len(rows),
        )
    if reused:
        log.warning(
            "NOT HELD OUT: the evaluated rows (%s) also served for %s, so these figures are optimistic; "
            "evaluate on a split that played no part in training (eval_dataset: name:test)",
            eval_spec,
            " and ".join(reused),
        )
    context = {
        "model": cfg.model_name_or_path,
        "adapter": str(classifier.adapter) if classifier.adapter else None,
        "eval_dataset": eval_spec,
        "multi_label": space.multi_label,
        "data_origin": split.origin,
        "held_out": not reused,
        "also_used_for": reused,
        "texts_in_training": in_training,
        "backend": cfg.backend,
        "mode": classifier.mode,
        "dtype": classifier.dtype,
        "device": str(classifier.device),
        "decoding": "sampling" if cfg.do_sample and classifier.mode == "generate" else "greedy",
        # Rows a reviewed exclusion list left out of this split: the figures are not the full split's.
        "rows_left_out_by_exclusion_list": (
            {"rows": split.excluded, "list": str(split.exclusions)} if split.excluded else None
        ),
        "thresholds": classifier.threshold_record(),
        "prompting": classifier.prompting_record(),
        "answers_cut_at_max_new_tokens": result.unfinished if result.answers is not None else None,
        "inference_seconds": round(seconds, 1),
        "examples_per_second": round(len(rows) / seconds, 2),
    }
    history = None
    if classifier.adapter is not None and (classifier.adapter / TRAINER_LOG_FILE).is_file():
        history = read_jsonl(classifier.adapter / TRAINER_LOG_FILE)
    run = RunDir(cfg.output_dir)
    if run.manifest() is not None:  # the evaluation belongs to the run: overwrite_output_dir removes it too
        run.record(dirs=[str(out_dir.resolve().relative_to(run.path.resolve()))])
    write_eval_outputs(out_dir, rows, metrics, context, history, split.skipped)
    headline = headline_metric(space.multi_label)
    log.info(
        "%s %.4f, macro-F1 %.4f, invalid %.2f%% on %d rows; wrote %s",
        headline,
        metrics[headline],
        metrics["macro_f1"],
        100 * metrics["invalid_rate"],
        metrics["n"],
        out_dir,
    )
    return metrics
