"""`instructemo tune CONFIG.yaml --trials N`: hyperparameter search with Optuna, scored on the dev split only.

The config's `tune:` section declares the search space over config keys:

    tune:
      trials: 20                 # default for --trials
      space:
        learning_rate: {low: 5.0e-5, high: 1.0e-3, log: true}
        lora_rank: [4, 8, 16]    # a list: choose one of these
        num_train_epochs: {low: 1, high: 3, step: 1}
      pruner: median             # or none
      startup_trials: 2          # trials finished before any is pruned
      enqueue:                   # settings to try first (e.g. the recipe you have now)
        - {learning_rate: 1.0e-4, lora_rank: 8, num_train_epochs: 1}

Each trial trains the config with its sampled values into
output_dir/trials/trial-NNN, with select_best on: the dev evaluations it makes
at each epoch's end (and every select_steps) are the trial's intermediate
values, and the median pruner stops a trial whose dev score falls below the
median of earlier trials at the same step. A `stage: sft` trial's value is the
best dev select_metric, the checkpoint select_best keeps. A `stage: head` trial
keeps its best checkpoint the same way, and its value is generate-eval's on the
same dev rows (for multi-label, with the thresholds calibrated there).

The study lives in output_dir/study.db (SQLite). `tune` run again continues it
until N trials have finished; a trial a kill interrupted is marked failed and
tried again, its training resumed from its last checkpoint. After each trial,
tune writes trials.csv and trials.md, best.yaml (the best trial's config,
runnable with `instructemo sft`) and report.html with Optuna's optimisation
history and parameter importances (also as PNG).

The test split is never read: trials train with do_eval off, and a config
whose dev split is a test split is refused.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from instructemo.config.schema import Config
from instructemo.data.datasets import run_spec, spec_options
from instructemo.data.splits import held_out_locations, split_location, training_location
from instructemo.errors import UserError
from instructemo.evaluate.generate import run_generate_eval
from instructemo.run.directory import (
    METRICS_FILE,
    SELECTION_FILE,
    STUDY_FILE,
    TRAIN_RESULTS_FILE,
    TRIALS_DIR,
    TRIALS_MD_FILE,
    RunDir,
)
from instructemo.run.fileio import json_text, read_json
from instructemo.train.monitor import TrainingDiverged
from instructemo.train.preflight import differences
from instructemo.train.sft import run_sft
from instructemo.tune.report import best_trial, show, write_outputs
from instructemo.tune.space import TuneSettings, trial_config, tune_settings

log = logging.getLogger(__name__)

STUDY_NAME = "instructemo"
EVAL_DIR_NAME = "dev_eval"
# This many trials failing in a row for one reason stop the search: the cause is not the values tried.
FAILURES_IN_A_ROW = 3


# --- the split the study scores on -----------------------------------------------------


def check_dev_is_not_test(cfg: Config) -> str:
    """The dev split's spec; refuses one that is a test split (the held-out rows must stay unseen)."""
    spec = run_spec(cfg, "dev")
    options = spec_options(cfg)
    dev = split_location(spec, cfg.dataset_dir, "dev", **options)
    tests = held_out_locations(cfg)
    if dev in tests:
        raise UserError(
            f"tune would score its trials on {spec}, which is the test split {tests[dev]} ({dev}); a search that "
            "reads the test split overstates the result: set select_dataset to a dev split or a held-out file"
        )
    if dev == training_location(cfg):
        raise UserError(
            f"tune would score its trials on {spec}, the training split itself; set select_dataset to a dev "
            "split or a held-out file"
        )
    return spec


# --- the study -----------------------------------------------------------------------


def _study_identity(cfg: Config, settings: TuneSettings) -> dict:
    """What makes two tune runs one study: the base config and the search, not the number of trials."""
    values = {k: v for k, v in cfg.to_dict().items() if k not in ("output_dir", "overwrite_output_dir", "resume")}
    values["tune"] = {k: v for k, v in (cfg.tune or {}).items() if k != "trials"}
    return json.loads(json_text(values))


@contextmanager
def _locked(directory: Path):
    """Hold a lock on output_dir itself: two tune processes on one study would run one trial twice."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another instructemo tune is running in {directory}; wait for it, or choose another output_dir"
            ) from None
        yield
    finally:
        os.close(handle)


def _open_study(cfg: Config, settings: TuneSettings, path: Path, new: bool):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials)
        if settings.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    storage = f"sqlite:///{path.resolve()}"
    identity = _study_identity(cfg, settings)
    if not new:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=pruner)
        stored = study.user_attrs.get("identity")
        changes = differences(stored, identity) if stored is not None else ["(no record of its settings)"]
        if changes:
            shown = "; ".join(changes[:6]) + ("; ..." if len(changes) > 6 else "")
            raise UserError(
                f"the study in {path} was run with other settings ({shown}); continue it with the same config, "
                "or set overwrite_output_dir: true to start a new one"
            )
    else:
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize", pruner=pruner)
        study.set_user_attr("identity", identity)
        study.set_user_attr("metric", cfg.select_metric)
        for params in settings.enqueue:
            study.enqueue_trial(params)
    # A fresh seed per session, so a resumed search does not sample its first trials' values again.
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials))
    return study


def _retry_interrupted(study) -> None:
    """Trials left running by a killed tune: mark them failed and queue their values again, to resume."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(
            trial.params,
            user_attrs={"retry_of": trial.number, "output_dir": trial.user_attrs.get("output_dir")},
        )
        log.info("trial %d was interrupted: it is tried again, resuming its training", trial.number)


def counted_trials(study) -> int:
    """Finished trials, an interrupted one counted once (through the trial that tried it again)."""
    from optuna.trial import TrialState

    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    return sum(
        1
        for t in study.trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and t.number not in retried
    )


def run_tune(cfg: Config, trials: int | None = None) -> dict:
    """Run the search until `trials` trials have finished; return the best trial's number, value and settings."""
    settings = tune_settings(cfg)
    if cfg.nproc_per_node > 1 or cfg.deepspeed:
        raise UserError("tune runs its trials in this one process; set nproc_per_node: 1 and no deepspeed")
    trials = trials if trials is not None else settings.trials
    if trials < 1:
        raise UserError(f"--trials {trials}: run at least one trial")
    dev_spec = check_dev_is_not_test(cfg)
    for params in [*settings.enqueue, {}]:  # a config error in the trials surfaces now, not after hours of search
        trial_config(cfg, params, Path(cfg.output_dir) / TRIALS_DIR / "check", resume=False)

    import optuna  # noqa: F401 (a missing package is said before output_dir changes)

    run = RunDir(cfg.output_dir)
    manifest = run.manifest() if run.path.is_dir() else None
    continuing = manifest is not None and manifest.get("kind") == "tune" and not cfg.overwrite_output_dir
    run.check_can_begin("tune", replace=cfg.overwrite_output_dir, keep=continuing)
    run.path.mkdir(parents=True, exist_ok=True)
    with _locked(run.path):
        run.begin("tune", replace=cfg.overwrite_output_dir, keep=continuing)
        # SQLite's journal lies beside the study while it writes (and after a kill mid-write).
        run.record(files=[STUDY_FILE, f"{STUDY_FILE}-journal", f"{STUDY_FILE}-wal"], dirs=[TRIALS_DIR])
        study = _open_study(cfg, settings, run.path / STUDY_FILE, new=not (run.path / STUDY_FILE).is_file())
        _retry_interrupted(study)
        done = counted_trials(study)
        if done >= trials:
            log.info("the study already has %d finished trials (--trials %d): nothing to run", done, trials)
        log.info(
            "tuning %d trial(s) on %s (%s), %d finished before",
            trials - min(done, trials),
            dev_spec,
            cfg.select_metric,
            done,
        )
        failures: list[str] = []  # the reasons of the trials that failed in a row
        while counted_trials(study) < trials:
            failure = _run_trial(cfg, settings, study, run)
            write_outputs(cfg, study, run)
            failures = failures + [failure] if failure is not None else []
            if len(failures) >= FAILURES_IN_A_ROW and len(set(failures)) == 1:
                raise UserError(
                    f"{len(failures)} trials in a row failed the same way ({failures[0]}); fix that, then run tune "
                    "again: the study continues (those trials are marked failed)"
                )
        write_outputs(cfg, study, run)
        run.publish(lambda staging: None)  # every file is in place: the search is complete up to `trials`
    best = best_trial(study)
    print((run.path / TRIALS_MD_FILE).read_text())
    return best or {}


def _run_trial(cfg: Config, settings: TuneSettings, study, run: RunDir) -> str | None:
    """Ask the study for a trial, train and score it, and tell the study; the failure's reason when it failed."""
    from optuna.trial import TrialState

    trial = study.ask(settings.space)
    retry_of = trial.user_attrs.get("retry_of")
    output_dir = Path(trial.user_attrs.get("output_dir") or run.path / TRIALS_DIR / f"trial-{trial.number:03d}")
    trial.set_user_attr("output_dir", str(output_dir))
    trial_cfg = trial_config(cfg, trial.params, output_dir, resume=retry_of is not None)
    shown = ", ".join(f"{k}={show(v)}" for k, v in trial.params.items())
    log.info("trial %d%s: %s", trial.number, f" (again, for trial {retry_of})" if retry_of is not None else "", shown)
    reported: set[int] = set()

    def on_selection(history: list[dict]) -> bool:
        for point in history:
            if point["step"] not in reported:
                trial.report(point[cfg.select_metric], point["step"])
                reported.add(point["step"])
        return trial.should_prune()

    started = time.perf_counter()
    try:
        value, history, pruned_at = _train_and_score(trial_cfg, on_selection)
    except Exception as exc:  # any failure ends this trial, not the search: it is marked failed with its reason
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        expected = isinstance(exc, (TrainingDiverged, torch.OutOfMemoryError, UserError))
        reason = reason if expected else f"{type(exc).__name__}: {reason}"
        trial.set_user_attr("failure", reason)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, reason, exc_info=not expected)  # a bug keeps its traceback
        return reason
    on_selection(history)  # the points a resumed or already finished run scored before this session
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
    trial.set_user_attr("train_seconds", read_json(output_dir / TRAIN_RESULTS_FILE)["train_seconds"])
    if pruned_at is not None:
        trial.set_user_attr("pruned_at_step", pruned_at)
        study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d pruned at step %d (dev %s below the median)", trial.number, pruned_at, cfg.select_metric)
        return None
    study.tell(trial, value)
    best = study.best_trial
    log.info(
        "trial %d: dev %s %.4f (best: trial %d, %.4f)", trial.number, cfg.select_metric, value, best.number, best.value
    )


def _train_and_score(trial_cfg: Config, on_selection) -> tuple[float, list[dict], int | None]:
    """Train one trial (or finish it, when resumed): (dev value, the dev evaluations, the step it was pruned at)."""
    run = RunDir(trial_cfg.output_dir)
    if not run.is_complete():
        run_sft(trial_cfg, on_selection=on_selection)
    metric = trial_cfg.select_metric
    selection = read_json(run.path / SELECTION_FILE)
    pruned_at = selection.get("stopped_early_at")
    if trial_cfg.stage == "sft" or pruned_at is not None:
        return selection["best"][metric], selection["history"], pruned_at
    # A head's value is generate-eval's on the same dev rows: multi-label, with the thresholds calibrated there.
    eval_dir = run.path / EVAL_DIR_NAME
    if not RunDir(eval_dir).is_complete():
        dev_cfg = dataclasses.replace(
            trial_cfg,
            eval_dataset=run_spec(trial_cfg, "dev"),
            max_eval_samples=trial_cfg.max_select_samples,
            eval_output_dir=str(eval_dir),
        )
        run_generate_eval(dev_cfg)
    return read_json(eval_dir / METRICS_FILE)["metrics"][metric], selection["history"], None
