"""What a training run watches as it goes: divergence stops it, checkpoints are recorded, time is kept.

- A non-finite loss or gradient stops training at once with a one-line error
  that names the step and the likely cause. The weights never take that step,
  no checkpoint is written from it, and nothing is saved as final.
- Each logging step appends a line to instructemo_live.jsonl (step, of how
  many, loss, training seconds): what a live view (the webui) shows.
- Every checkpoint-N is recorded in the run's manifest before the Trainer
  writes it (so overwrite_output_dir removes it), and gets a progress file
  after it: the run's fingerprint (what resume must match) and the training
  seconds so far (so a resumed run reports figures for the whole run).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from instructemo.errors import UserError
from instructemo.run.directory import LIVE_LOG_FILE, PROGRESS_FILE, RunDir, last_complete_checkpoint
from instructemo.run.fileio import json_text, write_atomic


class TrainingDiverged(UserError):
    """The loss or a gradient stopped being a finite number."""


def divergence_message(what: str, step: int, max_steps: int, learning_rate: float, bf16: bool, output_dir: Path) -> str:
    if step == 1:
        cause = "no update had been made yet, so the model's weights or inputs are broken"
    elif learning_rate >= 1e-2:
        cause = f"learning_rate {learning_rate:g} is likely too high (LoRA usually takes 1e-4 to 5e-4)"
    else:
        cause = "the learning rate may still be too high for this model (try a lower learning_rate or warmup_steps)" + (
            "; or bf16 overflowed (try bf16: false)" if bf16 else ""
        )
    kept = last_complete_checkpoint(output_dir)
    saved = f"the last good checkpoint, {kept.name}, is kept" if kept else "no checkpoint had been saved"
    return f"training diverged at step {step} of {max_steps}: {what}; {cause}; {saved}, and nothing was saved as final"


class FailOnDivergence:
    """Mixin for a Trainer: a training step whose loss is not finite stops the run (TrainingDiverged)."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            args = self.args
            raise TrainingDiverged(
                divergence_message(
                    f"the loss is {loss.float().item():g}",
                    self.state.global_step + 1,
                    self.state.max_steps,
                    args.learning_rate,
                    args.bf16,
                    Path(args.output_dir),
                )
            )
        return loss


class RunMonitor(TrainerCallback):
    """Records checkpoints in the run's manifest, writes their progress files, and checks gradients before each update."""

    def __init__(self, run: RunDir, fingerprint: dict, seconds_before: float = 0.0, main_process: bool = True):
        self.run, self.fingerprint = run, fingerprint
        self.seconds_before = seconds_before
        self.main_process = main_process
        self.started = time.perf_counter()
        self.saving: str | None = None  # the checkpoint being written, while the Trainer writes it

    @property
    def train_seconds(self) -> float:
        """Training time of the whole run: before the checkpoint it resumed from, plus this session."""
        return self.seconds_before + time.perf_counter() - self.started

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        if self.main_process:
            self.run.record(files=[LIVE_LOG_FILE])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.main_process or not logs or "loss" not in logs:
            return
        line = {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 4),
            "loss": float(logs["loss"]),
            "learning_rate": float(logs.get("learning_rate") or 0.0),
            "train_seconds": round(self.train_seconds, 1),
        }
        with open(self.run.path / LIVE_LOG_FILE, "a", encoding="utf-8") as live:  # appended whole, one line a step
            live.write(json.dumps(line) + "\n")

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = (
            [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None] if model is not None else []
        )
        if grads and not torch.stack([g.isfinite().all() for g in grads]).all():
            raise TrainingDiverged(
                divergence_message(
                    "a gradient is not finite",
                    state.global_step + 1,
                    state.max_steps,
                    args.learning_rate,
                    args.bf16,
                    Path(args.output_dir),
                )
            )

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            self.saving = f"checkpoint-{state.global_step}"
            if self.main_process:
                self.run.record(dirs=[self.saving])  # before the Trainer writes it

    def on_save(self, args, state, control, **kwargs):
        self.saving = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every process's shard of the checkpoint is written before it is marked whole
        if self.main_process:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            progress = {
                "fingerprint": self.fingerprint,
                "global_step": state.global_step,
                "train_seconds": round(self.train_seconds, 1),
            }
            write_atomic(checkpoint / PROGRESS_FILE, json_text(progress))  # last: it marks the checkpoint whole
            self.run.seal(checkpoint.name)  # its files are listed: a file added later is not the run's
