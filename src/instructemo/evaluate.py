"""`instructemo generate-eval`: run the model on a labelled split, score it and report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .config import Config
from .data import Split, default_eval_spec, load_split, reader_options, resolve_label_space, spec_options, split_source
from .errors import UserError
from .infer import classify, classify_dense, load_engine, threshold_rule
from .infer.dense import DenseEngine, run_stage
from .labels import LabelSpace
from .metrics import score
from .models import resolve_model_path, use_bf16
from .prompts import PromptBuilder, load_template, render_user_turn
from .report import check_eval_dir, write_eval_outputs
from .rundir import LABEL_SPACE_FILE, SELECTION_FILE, THRESHOLDS_FILE, TRAINER_LOG_FILE, RunDir, read_json

log = logging.getLogger(__name__)


def find_adapter(cfg: Config) -> Path | None:
    """The trained adapter or model to evaluate, or None for the base model alone (zero-shot)."""
    if cfg.adapter_name_or_path:
        path = Path(cfg.adapter_name_or_path)
        if not path.is_dir():
            raise UserError(f"adapter_name_or_path {path} not found; point it at a training output_dir")
        RunDir(path).require_complete()
        return path
    output_dir = Path(cfg.output_dir)
    run = RunDir(output_dir)
    run.require_complete()  # never the base model in place of a run that did not finish
    if (output_dir / "adapter_config.json").is_file() or (output_dir / "config.json").is_file():
        return output_dir
    if run.manifest() is not None:
        raise UserError(f"the run in {output_dir} has no adapter_config.json or config.json: its model files are gone; "
                        "train it again with overwrite_output_dir: true")
    return None


def trained_label_space(cfg: Config, adapter: Path | None) -> tuple[LabelSpace, str]:
    """The label space the model was trained on, else the training dataset's; and the default template."""
    space, template = resolve_label_space(cfg.dataset, cfg.dataset_dir, **spec_options(cfg))
    if adapter is not None and (adapter / LABEL_SPACE_FILE).is_file():
        space = LabelSpace.from_dict(read_json(adapter / LABEL_SPACE_FILE), str(adapter / LABEL_SPACE_FILE))
    return space, template


def load_thresholds(adapter: Path | None, space: LabelSpace):
    """Per-label thresholds calibrated by `instructemo calibrate`, in label order, or None."""
    path = adapter / THRESHOLDS_FILE if adapter is not None else None
    if path is None or not path.is_file():
        return None
    stored = read_json(path)["thresholds"]
    if set(stored) != set(space.names):
        raise UserError(f"{path} holds thresholds for other labels than the model's; run instructemo calibrate again")
    return np.array([stored[n] for n in space.names])


class Classifier:
    """A loaded model with its prompts and label space: texts in, labels (and probabilities) out."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.adapter = find_adapter(cfg)
        self.space, default_template = trained_label_space(cfg, self.adapter)
        self.template = load_template(cfg.template, default_template)
        self.bf16 = use_bf16(cfg.bf16)
        self.thresholds = load_thresholds(self.adapter, self.space)
        if self.thresholds is not None and cfg.score_threshold is not None:
            log.warning("score_threshold %g is not used: %s holds per-label thresholds calibrated by instructemo "
                        "calibrate, which take precedence; remove that file to use one threshold for every label",
                        cfg.score_threshold, self.adapter / THRESHOLDS_FILE)
        self.stage = run_stage(self.adapter, cfg.stage)
        if self.stage == "sft":
            render_user_turn(self.template, "a text", self.space)  # a template error surfaces before the model loads

    def threshold_record(self) -> dict | None:
        """For metrics.json: the multi-label thresholds used and where they came from (None where none apply)."""
        if not self.space.multi_label or self.mode == "generate":
            return None
        source, values = threshold_rule(self.space, self.thresholds, self.cfg.score_threshold)
        return {"source": source, "values": {n: float(t) for n, t in zip(self.space.names, values)}}

    @property
    def mode(self) -> str:
        """What produced the labels: generate or score (stage sft), or cls (a classification head)."""
        return "cls" if self.stage == "cls" else self.cfg.mode

    def load(self) -> "Classifier":
        """Load the model; separate from __init__ so input checks run first."""
        base = resolve_model_path(self.cfg.model_name_or_path)
        if self.stage == "cls":
            self.engine = DenseEngine(self.cfg, base, self.adapter, self.space, self.bf16)
            return self
        if self.adapter is None:
            log.warning("no trained adapter in %s: using the base model zero-shot", self.cfg.output_dir)
        self.engine = load_engine(self.cfg, base, self.adapter, self.bf16)
        self.prompts = PromptBuilder(self.engine.tokenizer, self.template, self.space, self.cfg.cutoff_len)
        return self

    def classify(self, texts: list[str]):
        if self.stage == "cls":
            return classify_dense(self.cfg, self.engine, texts, self.space, self.thresholds)
        return classify(self.cfg, self.engine, [self.prompts.prompt(t) for t in texts], self.space, self.thresholds)


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


def run_generate_eval(cfg: Config, split: Split | None = None) -> dict:
    """Evaluate on cfg.eval_dataset (or the rows of `split`) and write predictions, metrics and a report."""
    classifier = Classifier(cfg)
    space = classifier.space
    if split is None:
        eval_spec = cfg.eval_dataset or default_eval_spec(cfg.dataset, cfg.dataset_dir, **spec_options(cfg))
        split = load_split(eval_spec, cfg.dataset_dir, default_split="test", label_space=space,
                           max_samples=cfg.max_eval_samples, **reader_options(cfg))
    else:
        eval_spec = split.name
    out_dir = cfg.resolved_eval_output_dir
    check_eval_dir(out_dir)
    classifier.load()
    started = time.perf_counter()
    result = classifier.classify([r.text for r in split.records])
    seconds = time.perf_counter() - started
    metrics = score([r.labels for r in split.records], result.labels, space, result.probabilities)
    rows = []
    for i, (record, labels) in enumerate(zip(split.records, result.labels)):
        row = {"id": record.id, "source": record.source, "text": record.text, "gold": list(record.labels),
               "generation": result.answers[i] if result.answers is not None else None,
               "predicted": list(labels) if labels is not None else None}
        if result.probabilities is not None:
            row["probabilities"] = {n: round(float(p), 6) for n, p in zip(space.names, result.probabilities[i])}
        rows.append(row)
    if result.unfinished:
        log.warning("%d of %d answers reached max_new_tokens=%d before the model ended its turn: they may be cut "
                    "short; raise max_new_tokens", result.unfinished, len(rows), cfg.max_new_tokens)
    reused = tuning_uses(classifier, split)
    if reused:
        log.warning("NOT HELD OUT: the evaluated rows (%s) also served for %s, so these figures are optimistic; "
                    "evaluate on a split that played no part in training (eval_dataset: name:test)",
                    eval_spec, " and ".join(reused))
    context = {
        "model": cfg.model_name_or_path,
        "adapter": str(classifier.adapter) if classifier.adapter else None,
        "eval_dataset": eval_spec,
        "data_origin": split.origin,
        "held_out": not reused,
        "also_used_for": reused,
        "backend": cfg.backend,
        "mode": classifier.mode,
        "decoding": "sampling" if cfg.do_sample and classifier.mode == "generate" else "greedy",
        "thresholds": classifier.threshold_record(),
        "answers_cut_at_max_new_tokens": result.unfinished if result.answers is not None else None,
        "inference_seconds": round(seconds, 1),
        "examples_per_second": round(len(rows) / seconds, 2),
    }
    history = None
    if classifier.adapter is not None and (classifier.adapter / TRAINER_LOG_FILE).is_file():
        history = [json.loads(line) for line in (classifier.adapter / TRAINER_LOG_FILE).read_text().splitlines() if line]
    run = RunDir(cfg.output_dir)
    if run.manifest() is not None:  # the evaluation belongs to the run: overwrite_output_dir removes it too
        run.record(dirs=[str(out_dir.resolve().relative_to(run.path.resolve()))])
    write_eval_outputs(out_dir, rows, metrics, context, history, split.skipped)
    headline = "jaccard" if space.multi_label else "accuracy"
    log.info(
        "%s %.4f, macro-F1 %.4f, invalid %.2f%% on %d rows; wrote %s",
        headline, metrics[headline], metrics["macro_f1"], 100 * metrics["invalid_rate"], metrics["n"], out_dir,
    )
    return metrics
