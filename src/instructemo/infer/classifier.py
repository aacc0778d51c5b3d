"""A trained run as a classifier: texts in, labels (and probabilities) out.

`Classifier` finds the run (adapter, fully fine-tuned model or classification
head) and its label space, thresholds and template, loads the configured
engine, and classifies; generate-eval, predict and calibrate all go through it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from instructemo.config.schema import Config, saved_stage
from instructemo.data.datasets import Split, load_run_split, resolve_label_space, spec_options, split_source
from instructemo.data.labels import LabelSpace
from instructemo.data.recorded import check_split_is_the_runs
from instructemo.errors import UserError
from instructemo.infer import classify, classify_dense, load_engine, threshold_rule
from instructemo.infer.dense import DenseEngine
from instructemo.infer.loading import pick_device
from instructemo.models.load import resolve_model_path, use_bf16
from instructemo.prompts.builder import PromptBuilder, compile_template, render_user_turn, template_source
from instructemo.prompts.shots import ShotPicker
from instructemo.run.directory import (
    CONFIG_FILE,
    LABEL_SPACE_FILE,
    PROMPT_TEMPLATE_FILE,
    THRESHOLDS_FILE,
    RunDir,
)
from instructemo.run.fileio import read_json, read_yaml_file
from instructemo.run.saved_model import saved_model_kind, weights_digest

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
    if saved_model_kind(output_dir) is not None:
        return output_dir
    if run.manifest() is not None:
        raise UserError(
            f"the run in {output_dir} has no adapter_config.json or config.json: its model files are gone; "
            "train it again with overwrite_output_dir: true"
        )
    return None


@dataclass
class TrainedPrompt:
    """What a run classifies with besides its weights: its label space and its prompt template."""

    space: LabelSpace
    template_text: str
    template_origin: Path

    @property
    def template(self):
        return compile_template(self.template_text, self.template_origin)


def trained_prompt(cfg: Config, adapter: Path | None) -> TrainedPrompt:
    """The label space and template the run was trained with, read from the run itself, so a run copied to
    another machine without its data classifies as it did; the dataset's, for a base model (zero-shot)."""
    space_file = adapter / LABEL_SPACE_FILE if adapter is not None else None
    if space_file is None or not space_file.is_file():
        space, default = resolve_label_space(cfg.dataset, cfg.dataset_dir, **spec_options(cfg))
        return TrainedPrompt(space, *template_source(cfg.template, default))
    space = LabelSpace.from_dict(read_json(space_file), str(space_file))
    trained = read_yaml_file(adapter / CONFIG_FILE, "run config") if (adapter / CONFIG_FILE).is_file() else {}
    saved = adapter / PROMPT_TEMPLATE_FILE
    if saved.is_file() and cfg.template in ("auto", trained.get("template")):
        return TrainedPrompt(space, saved.read_text(encoding="utf-8"), saved)
    if saved.is_file():
        log.warning(
            "template %s is not the one the run in %s was trained with (%s); classifying with %s",
            cfg.template,
            adapter,
            trained.get("template_resolved"),
            cfg.template,
        )
    default = trained.get("template_resolved") or ("multi_label" if space.multi_label else "single_label")
    return TrainedPrompt(space, *template_source(cfg.template, default))


def load_thresholds(adapter: Path | None, space: LabelSpace):
    """Per-label thresholds calibrated by `instructemo calibrate`, in label order, or None."""
    path = adapter / THRESHOLDS_FILE if adapter is not None else None
    if path is None or not path.is_file():
        return None
    data = read_json(path)
    stored = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(stored, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in stored.values()
    ):  # read_json already refused NaN and infinity
        raise UserError(
            f'{path} is not a thresholds file ({{"thresholds": {{label: number}}}}); run instructemo calibrate again'
        )
    if set(stored) != set(space.names):
        raise UserError(f"{path} holds thresholds for other labels than the model's; run instructemo calibrate again")
    return np.array([stored[n] for n in space.names])


class Classifier:
    """A loaded model with its prompts and label space: texts in, labels (and probabilities) out."""

    def __init__(self, cfg: Config, device: torch.device | None = None):
        """`device`: where the model will run (default: cfg.device's choice)."""
        self.cfg = cfg
        self.device = device if device is not None else pick_device(cfg.device)
        self.adapter = find_adapter(cfg)
        self.prompt = trained_prompt(cfg, self.adapter)
        self.space, self.template = self.prompt.space, self.prompt.template
        self.bf16 = use_bf16(cfg.bf16, self.device)
        # Scores depend on it (bf16 rounds each probability by about 1e-3): metrics.json and export record it.
        self.dtype = "bfloat16" if self.bf16 else "float32"
        self.thresholds = load_thresholds(self.adapter, self.space)
        if self.thresholds is not None and cfg.score_threshold is not None:
            log.warning(
                "score_threshold %g is not used: %s holds per-label thresholds calibrated by instructemo "
                "calibrate, which take precedence; remove that file to use one threshold for every label",
                cfg.score_threshold,
                self.adapter / THRESHOLDS_FILE,
            )
        self.stage = saved_stage(self.adapter, cfg.stage)
        if self.stage == "sft":
            render_user_turn(self.template, "a text", self.space)  # a template error surfaces before the model loads
        self.shot_pool = self._shot_pool()
        self.shots: ShotPicker | None = None

    def _shot_pool(self) -> Split | None:
        """The training rows few_shot examples come from, read (and checked) before any model loads."""
        if self.cfg.few_shot == 0:
            return None
        if self.stage == "head":
            raise UserError("few_shot shows examples in a prompt; a classification head (stage: head) reads no prompt")
        if self.adapter is not None:
            log.warning(
                "few_shot with a trained adapter: it learned zero-shot prompts, and now sees %d example(s) per label",
                self.cfg.few_shot,
            )
        pool = load_run_split(self.cfg, "train", label_space=self.space, max_samples=self.cfg.max_samples)
        check_split_is_the_runs(self.adapter, "train", self.cfg.dataset, pool)
        return pool

    def prompting_record(self) -> dict | None:
        """For metrics.json: the few-shot examples' count, choice and source (None when zero-shot)."""
        if self.shot_pool is None:
            return None
        return {
            "few_shot": self.cfg.few_shot,
            "selection": self.cfg.few_shot_selection,
            "retriever": self.cfg.few_shot_retriever if self.cfg.few_shot_selection == "similar" else None,
            "shots_from": split_source(self.shot_pool),
        }

    def threshold_record(self) -> dict | None:
        """For metrics.json: the multi-label thresholds used and where they came from (None where none apply)."""
        if not self.space.multi_label or self.mode == "generate":
            return None
        source, values = threshold_rule(self.space, self.thresholds, self.cfg.score_threshold)
        return {"source": source, "values": {n: float(t) for n, t in zip(self.space.names, values)}}

    def fingerprint(self) -> dict:
        """Everything that decides this classifier's answers: what predict's resume must find unchanged, so that
        one output file never holds two models' answers (a run retrained in place, new thresholds, another prompt)."""
        cfg = self.cfg
        return {
            "model": cfg.model_name_or_path,
            "adapter": str(self.adapter),
            "weights": weights_digest(self.adapter) if self.adapter is not None else None,
            "mode": self.mode,
            "backend": cfg.backend,
            "dtype": self.dtype,
            "label_space": self.space.to_dict(),
            "template": hashlib.sha256(self.prompt.template_text.encode()).hexdigest()[:16],
            "thresholds": self.threshold_record(),
            "score_method": cfg.score_method,
            "few_shot": [cfg.few_shot, cfg.few_shot_selection, cfg.few_shot_retriever, cfg.seed] if cfg.few_shot else 0,
            "cutoff_len": cfg.cutoff_len,
            "max_new_tokens": cfg.max_new_tokens,
            "decoding": [cfg.temperature, cfg.top_p, cfg.seed] if cfg.do_sample else "greedy",
        }

    @property
    def mode(self) -> str:
        """What produced the labels: generate or score (stage sft), or head (a classification head)."""
        return "head" if self.stage == "head" else self.cfg.mode

    def load(self, progress: bool = True) -> "Classifier":
        """Load the model; separate from __init__ so input checks run first. progress: a bar per classify call."""
        base = resolve_model_path(self.cfg.model_name_or_path)
        if self.stage == "head":
            self.engine = DenseEngine(self.cfg, base, self.adapter, self.space, self.bf16, self.device)
        else:
            if self.adapter is None:
                log.warning("no trained adapter in %s: using the base model zero-shot", self.cfg.output_dir)
            self.engine = load_engine(self.cfg, base, self.adapter, self.bf16, self.device)
            shots = self.cfg.few_shot * len(self.space.names) if self.shot_pool is not None else 0  # per label
            self.prompts = PromptBuilder(self.engine.tokenizer, self.template, self.space, self.cfg.cutoff_len, shots)
            if self.shot_pool is not None:
                cfg = self.cfg
                self.shots = ShotPicker(
                    self.shot_pool.records,
                    self.space,
                    cfg.few_shot,
                    cfg.few_shot_selection,
                    cfg.seed,
                    cfg.few_shot_retriever,
                )
        self.engine.progress = progress
        return self

    def classify(self, texts: list[str]):
        if self.stage == "head":
            return classify_dense(self.cfg, self.engine, texts, self.space, self.thresholds)
        shots = self.shots.for_texts(texts) if self.shots is not None else [()] * len(texts)
        conversations = [self.prompts.prompt(t, s) for t, s in zip(texts, shots)]
        return classify(self.cfg, self.engine, conversations, self.space, self.thresholds)
