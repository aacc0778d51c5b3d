"""Checkpoint selection: keep the weights that classify the dev split best, not the last ones.

The lowest loss is not the best F1: on imbalanced data a model keeps lowering
its loss on the frequent labels while its rare-label F1 peaks and falls. So at
each epoch's end (and every `select_steps` optimizer steps) the model labels
the first `max_select_samples` dev rows, and the trainable weights of the best
score so far are kept in memory (for LoRA, a few MB). After training they are
put back before saving.

A generative model (stage sft) answers greedily and the parser maps the
answers to labels, as generate-eval does. A classification head (stage cls)
takes its most probable label, or, multi-label, every label at 0.5 or above: its
per-label thresholds are chosen on dev only after training.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback

from instructemo.config.schema import Config
from instructemo.data.datasets import Split, split_source
from instructemo.data.labels import LabelSpace
from instructemo.evaluate.metrics import score
from instructemo.infer import classify, decide
from instructemo.infer.dense import head_probabilities
from instructemo.infer.hf import HFEngine
from instructemo.run.directory import BEST_WEIGHTS_FILE, SELECTION_FILE, SELECTION_STATE_FILE
from instructemo.run.fileio import json_text, read_json, write_atomic

log = logging.getLogger(__name__)


Predictor = Callable[[torch.nn.Module], list]  # the model being trained -> labels for each dev row


def generative_predictor(cfg: Config, tokenizer, conversations: list[list[dict]], space: LabelSpace) -> Predictor:
    """Greedy answers parsed into labels, exactly as generate-eval gets them (infer.classify)."""
    greedy = dataclasses.replace(cfg, mode="generate", do_sample=False)

    def predict(model):
        return classify(greedy, HFEngine(greedy, model, tokenizer, progress=False), conversations, space).labels

    return predict


def head_predictor(cfg: Config, tokenizer, texts: list[str], space: LabelSpace) -> Predictor:
    """A classification head's labels: the most probable one, or every label at 0.5 or above (multi-label)."""

    def predict(model):
        return decide(
            head_probabilities(
                model, tokenizer, texts, cfg.cutoff_len, cfg.per_device_eval_batch_size, space.multi_label
            ),
            space,
        )

    return predict


class BestCheckpoint(TrainerCallback):
    def __init__(
        self,
        cfg: Config,
        predict: Predictor,
        gold: list[tuple[str, ...]],
        space: LabelSpace,
        source: dict | None = None,
        on_point: Callable[[list[dict]], bool] | None = None,
    ):
        self.predict, self.gold, self.space = predict, gold, space
        self.metric, self.every_steps = cfg.select_metric, cfg.select_steps
        self.source = source
        # Called with the history after each new point; True stops training there (tune prunes a trial this way).
        self.on_point = on_point
        self.stopped_at: int | None = None
        self.history: list[dict] = []
        self.best: dict | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None

    def on_save(self, args, state, control, **kwargs):
        """Keep the selection with the checkpoint: a resumed run then picks the best of the whole run."""
        if not state.is_world_process_zero or self.best is None:
            return
        from safetensors.torch import save_file

        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        save_file({n: t.contiguous() for n, t in self._best_weights.items()}, str(checkpoint / BEST_WEIGHTS_FILE))
        write_atomic(checkpoint / SELECTION_STATE_FILE, json_text({"history": self.history, "best": self.best}))

    def resume_from(self, checkpoint: Path) -> None:
        """The selection as it stood when `checkpoint` was written."""
        if not (checkpoint / SELECTION_STATE_FILE).is_file():
            log.warning(
                "%s holds no checkpoint selection (written before select_best kept one): the best "
                "checkpoint is chosen among the steps from here on",
                checkpoint,
            )
            return
        from safetensors.torch import load_file

        stored = read_json(checkpoint / SELECTION_STATE_FILE)
        self.history, self.best = stored["history"], stored["best"]
        self._best_weights = load_file(str(checkpoint / BEST_WEIGHTS_FILE))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            self._evaluate_and_ask(model, state, control)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._evaluate_and_ask(model, state, control)

    def _evaluate_and_ask(self, model, state, control) -> None:
        if self.evaluate(model, state.global_step, state.epoch) and self.on_point and self.on_point(self.history):
            log.info("step %d: stopped by the search (the trial is pruned)", state.global_step)
            self.stopped_at = state.global_step
            control.should_training_stop = True

    def evaluate(self, model, step: int, epoch: float | None) -> bool:
        """Score the dev rows at `step`; False when that step is already scored."""
        if self.history and self.history[-1]["step"] == step:
            return False
        was_training = model.training
        model.eval()
        predicted = self.predict(model)
        model.train(was_training)
        metrics = score(self.gold, predicted, self.space)
        point = {
            "step": step,
            "epoch": round(epoch or 0.0, 3),
            self.metric: metrics[self.metric],
            "invalid_rate": metrics["invalid_rate"],
        }
        self.history.append(point)
        improved = self.best is None or point[self.metric] > self.best[self.metric]
        if improved:
            self.best = point
            self._best_weights = {
                n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
            }
        log.info("step %d: dev %s %.4f%s", step, self.metric, point[self.metric], " (best so far)" if improved else "")
        return True

    def restore_best(self, model, final_step: int) -> dict:
        """Score the final weights too, put the best ones back, and return the selection record."""
        self.evaluate(model, final_step, self.history[-1]["epoch"] if self.history else None)
        if self.best["step"] != final_step:
            parameters = dict(model.named_parameters())
            with torch.no_grad():
                for name, saved in self._best_weights.items():
                    parameters[name].copy_(saved)
            log.info("kept the step-%d weights: dev %s %.4f", self.best["step"], self.metric, self.best[self.metric])
        return {
            "metric": self.metric,
            "best": self.best,
            "history": self.history,
            "dev_rows": len(self.gold),
            "data": self.source,
            **({"stopped_early_at": self.stopped_at} if self.stopped_at is not None else {}),
        }


def attach_selector(
    trainer, cfg: Config, predict: Predictor, select: Split, checkpoint: Path | None, on_point=None
) -> BestCheckpoint:
    """Checkpoint selection on the `select` rows, added to the trainer (continued from `checkpoint`, if any)."""
    selector = BestCheckpoint(
        cfg, predict, [r.labels for r in select.records], select.label_space, split_source(select), on_point
    )
    if checkpoint is not None:
        selector.resume_from(checkpoint)
    trainer.add_callback(selector)  # before the monitor, whose progress file marks a checkpoint whole
    return selector


def selection_files(selector: BestCheckpoint | None, model, final_step: int) -> dict[str, str]:
    """The run's selection.json, after the best weights are put back into `model` ({} without selection)."""
    if selector is None:
        return {}
    return {SELECTION_FILE: json_text(selector.restore_best(model, final_step))}
