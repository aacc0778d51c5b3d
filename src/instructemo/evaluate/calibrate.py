"""`instructemo calibrate`: per-label thresholds for multi-label score mode, chosen on the dev split.

One threshold for all labels under-predicts the rare ones: `surprise` rarely
gets a high probability even when present. For each label, the threshold that
maximises its F1 on the dev split is stored in the adapter's thresholds.json,
which generate-eval and predict then use in score mode.
"""

from __future__ import annotations

import dataclasses
import logging

from instructemo.config.schema import Config
from instructemo.data.datasets import load_run_split, run_spec, split_source
from instructemo.data.labels import binarize
from instructemo.data.recorded import check_split_is_the_runs
from instructemo.errors import UserError
from instructemo.evaluate.metrics import best_thresholds
from instructemo.infer.classifier import Classifier
from instructemo.run.directory import THRESHOLDS_FILE, write_into
from instructemo.run.fileio import json_text

log = logging.getLogger(__name__)


def run_calibrate(cfg: Config) -> dict:
    cfg = dataclasses.replace(cfg, mode="score", score_threshold=None)
    classifier = Classifier(cfg)
    space = classifier.space
    if not space.multi_label:
        raise UserError(
            "calibrate picks per-label thresholds for multi-label models; single-label score mode takes the most probable label"
        )
    if classifier.adapter is None:
        raise UserError(
            f"no trained model in {cfg.output_dir}; run instructemo sft first (or set adapter_name_or_path)"
        )
    spec = run_spec(cfg, "dev")
    split = load_run_split(cfg, "dev", label_space=space)
    check_split_is_the_runs(classifier.adapter, "dev", spec, split)
    classifier.thresholds = None  # probabilities only; old thresholds play no part
    result = classifier.load().classify([r.text for r in split.records])
    thresholds, f1 = best_thresholds(result.probabilities, binarize([r.labels for r in split.records], space))
    record = {
        "thresholds": {n: float(t) for n, t in zip(space.names, thresholds)},  # exact: a cut sits on a probability
        "dev_f1": {n: round(float(f), 4) for n, f in zip(space.names, f1)},
        "dataset": spec,
        "data": split_source(split),
        "rows": len(split.records),
    }
    write_into(classifier.adapter, THRESHOLDS_FILE, json_text(record))
    log.info(
        "thresholds on %d rows of %s, mean dev F1 %.4f; wrote %s",
        len(split.records),
        spec,
        f1.mean(),
        classifier.adapter / THRESHOLDS_FILE,
    )
    for name in space.names:
        log.info("  %-14s threshold %.3f  F1 %.3f", name, record["thresholds"][name], record["dev_f1"][name])
    return record
