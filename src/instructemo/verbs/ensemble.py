"""`instructemo ensemble RUN_DIR RUN_DIR ... --output DIR`: several evaluated runs combined into one classifier.

The leaderboard practice: models that err differently are averaged. It works
on what every `generate-eval` writes, so a dense head and a generative model
combine without loading either again.

- Single-label members are averaged by probability (soft voting): each needs
  probabilities, which a head run always has and a generative run has in
  mode=score.
- Multi-label members vote: a label is predicted when members holding at least
  half the weight name it (with two members, either one).

Members must have judged the very same rows (the same split, texts and gold
labels, in the same order) on the same labels; anything else is refused. The
weights are the user's, equal by default, and are recorded: weights picked by
looking at these rows' scores make the figures optimistic, as the report says.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instructemo.data.labels import LabelSpace
from instructemo.errors import UserError
from instructemo.evaluate.generate import training_overlap
from instructemo.evaluate.metrics import headline_metric, is_multi_label, score
from instructemo.infer import decide
from instructemo.report.evaluation import check_eval_dir, find_evaluation, write_eval_outputs
from instructemo.run.directory import METRICS_FILE, PREDICTIONS_FILE
from instructemo.run.fileio import read_json, read_jsonl

log = logging.getLogger(__name__)


@dataclass
class Member:
    path: Path  # as the user named it
    eval_dir: Path
    context: dict  # metrics.json
    rows: list[dict]  # predictions.jsonl
    weight: float

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.context["metrics"]["per_class"])

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.context)


def read_members(paths: list[Path], weights: list[float] | None) -> list[Member]:
    if len(paths) < 2:
        raise UserError("an ensemble needs at least two evaluated runs")
    weights = weights or [1.0] * len(paths)
    if len(weights) != len(paths):
        raise UserError(f"--weights gives {len(weights)} numbers for {len(paths)} runs; give one per run, in order")
    if any(not math.isfinite(w) or w <= 0 for w in weights) or not math.isfinite(sum(weights)):
        raise UserError(f"--weights must be positive numbers whose sum is finite, got {weights}")
    members, seen = [], {}
    for path, weight in zip(paths, weights):
        eval_dir = find_evaluation(path)
        if eval_dir.resolve() in seen:
            raise UserError(f"{path} and {seen[eval_dir.resolve()]} are the same evaluation; name each run once")
        seen[eval_dir.resolve()] = path
        members.append(
            Member(path, eval_dir, read_json(eval_dir / METRICS_FILE), read_jsonl(eval_dir / PREDICTIONS_FILE), weight)
        )
    runs: dict[tuple, Path] = {}  # a copied evaluation folder is the same member under another name
    for m in members:
        run = (m.context.get("adapter"), m.context.get("mode"))
        if run[0] is not None and run in runs:
            raise UserError(
                f"{runs[run]} and {m.path} are evaluations of the same run ({run[0]}, mode {run[1]}); "
                "an ensemble needs different models: name each run once"
            )
        runs[run] = m.path
    return members


def check_same_rows(members: list[Member]) -> None:
    """Refuse members that judged different rows or labels: their answers would be averaged across texts."""
    first = members[0]
    for m in members[1:]:
        if m.context["eval_dataset"] != first.context["eval_dataset"]:
            raise UserError(
                f"{first.path} was judged on {first.context['eval_dataset']} but {m.path} on "
                f"{m.context['eval_dataset']}; evaluate every run on the same eval_dataset"
            )
        if set(m.names) != set(first.names) or m.multi_label != first.multi_label:
            raise UserError(
                f"{first.path} and {m.path} classify into different labels ({', '.join(first.names)} against "
                f"{', '.join(m.names)}); ensemble runs of one task"
            )
        if len(m.rows) != len(first.rows):
            raise UserError(
                f"{first.path} judged {len(first.rows)} rows but {m.path} {len(m.rows)}; "
                "evaluate every run with the same eval_dataset and max_eval_samples"
            )
        for i, (a, b) in enumerate(zip(first.rows, m.rows)):
            if a["text"] != b["text"] or sorted(a["gold"]) != sorted(b["gold"]):
                raise UserError(
                    f"row {i + 1} of {first.path} and of {m.path} differ (text or gold labels); evaluate every run "
                    "on the same copy of the data, with the same eval_dataset and max_eval_samples"
                )


def combine(members: list[Member], space: LabelSpace) -> tuple[list[tuple[str, ...] | None], np.ndarray | None]:
    """The ensemble's labels per row, and its probabilities (single-label) or None (multi-label votes)."""
    total = sum(m.weight for m in members)
    if not space.multi_label:
        for m in members:
            if any(r.get("probabilities") is None for r in m.rows):
                raise UserError(
                    f"{m.path} has no label probabilities (mode {m.context.get('mode')}); single-label runs are "
                    "averaged by probability: run instructemo generate-eval on it with mode=score"
                )
        mean = sum(m.weight * np.array([[r["probabilities"][n] for n in space.names] for r in m.rows]) for m in members)
        mean = mean / total
        return decide(mean, space), mean
    predicted = []
    for i in range(len(members[0].rows)):
        answers = [(m.weight, m.rows[i]["predicted"]) for m in members]
        if all(labels is None for _, labels in answers):
            predicted.append(None)  # no member gave a valid answer: the ensemble has none either
            continue
        share = {n: sum(w for w, labels in answers if labels and n in labels) / total for n in space.names}
        predicted.append(tuple(n for n in space.names if share[n] >= 0.5 - 1e-9))
    return predicted, None


def held_out_record(members: list[Member], texts: list[str]) -> dict:
    """What else the rows served for, in any member, and how many texts any member trained on."""
    spec = members[0].context["eval_dataset"]
    also: list[str] = []
    in_training = None
    for m in members:
        also += [use for use in m.context.get("also_used_for") or [] if use not in also]
        adapter = m.context.get("adapter")
        if not adapter:
            continue
        if not Path(adapter).is_dir():
            log.warning(
                "%s: its run %s is not here, so its training rows were not checked against these", m.path, adapter
            )
            continue
        overlap = training_overlap(Path(adapter), texts, spec)
        if overlap is None:
            continue
        if overlap["same_split"] and "training" not in also:
            also.insert(0, "training")
        in_training = [a or b for a, b in zip(in_training or [False] * len(texts), overlap["in_training"])]
    return {
        "held_out": not also,
        "also_used_for": also,
        "texts_in_training": sum(in_training) if in_training is not None else None,
    }


def run_ensemble(paths: list[Path], output: Path, weights: list[float] | None = None) -> dict:
    """Combine the evaluations in `paths` and write predictions, metrics and a report into `output`."""
    members = read_members(paths, weights)
    for m in members:
        if output.resolve() == m.eval_dir.resolve():
            raise UserError(f"--output {output} is the evaluation of {m.path}; choose a new folder for the ensemble")
    check_same_rows(members)
    check_eval_dir(output)
    equal_weights = len({m.weight for m in members}) == 1
    if not equal_weights:
        log.warning(
            "weights %s: if they were chosen by these rows' scores, the figures are optimistic; choose them on "
            "a dev split's evaluations",
            [m.weight for m in members],
        )
    first = members[0]
    space = LabelSpace(first.names, first.multi_label)
    predicted, probabilities = combine(members, space)
    rows_in = first.rows
    gold = [tuple(r["gold"]) for r in rows_in]
    metrics = score(gold, predicted, space, probabilities)
    rows = []
    for i, (row, labels) in enumerate(zip(rows_in, predicted)):
        out = {k: row[k] for k in ("id", "source", "text", "gold")}
        out |= {"generation": None, "predicted": list(labels) if labels is not None else None}
        if probabilities is not None:
            out["probabilities"] = {n: round(float(p), 6) for n, p in zip(space.names, probabilities[i])}
        out["members"] = [m.rows[i]["predicted"] for m in members]
        rows.append(out)
    record = held_out_record(members, [r["text"] for r in rows_in])
    if not record["held_out"]:
        log.warning(
            "NOT HELD OUT: in its members, the evaluated rows (%s) also served for %s, so these figures are optimistic",
            first.context["eval_dataset"],
            " and ".join(record["also_used_for"]),
        )
    seconds = sum(m.context.get("inference_seconds") or 0 for m in members)
    context = {
        "model": "ensemble of " + " + ".join(m.path.name for m in members),
        "adapter": None,
        "eval_dataset": first.context["eval_dataset"],
        "multi_label": space.multi_label,
        "data_origin": first.context.get("data_origin"),
        **record,
        "mode": "ensemble",
        "combination": "vote: a label named by members holding at least half the weight"
        if space.multi_label
        else "mean of the members' probabilities, weighted",
        "members": [
            {
                "evaluation": str(m.eval_dir),
                "model": m.context.get("model"),
                "adapter": m.context.get("adapter"),
                "mode": m.context.get("mode"),
                "weight": m.weight,
                "macro_f1": m.context["metrics"]["macro_f1"],
                headline_metric(space.multi_label): m.context["metrics"].get(headline_metric(space.multi_label)),
            }
            for m in members
        ],
        "weights": "equal" if equal_weights else "given by the user (--weights)",
        "inference_seconds": round(seconds, 1),  # every member's, one after another
        "examples_per_second": round(len(rows) / seconds, 2) if seconds else None,
    }
    write_eval_outputs(output, rows, metrics, context)
    headline = headline_metric(space.multi_label)
    log.info(
        "ensemble of %d runs: %s %.4f, macro-F1 %.4f on %d rows (members' %s: %s); wrote %s",
        len(members),
        headline,
        metrics[headline],
        metrics["macro_f1"],
        metrics["n"],
        headline,
        ", ".join(f"{m.context['metrics'].get(headline, float('nan')):.4f}" for m in members),
        output,
    )
    return metrics
