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
output_dir/trials/trial-NNN. A `stage: sft` trial trains with select_best on:
the dev evaluations it makes at each epoch's end (and every select_steps) are
the trial's intermediate values, and the median pruner stops a trial whose dev
score falls below the median of earlier trials at the same step. Its value is
the best dev select_metric, the checkpoint select_best keeps. A `stage: cls`
trial is scored once, on the same dev rows, after training.

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

import csv
import dataclasses
import fcntl
import io
import json
import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import FIELDS, Config, key_types, make_config
from .data import held_out_locations, run_spec, spec_options, split_location
from .errors import UserError
from .evaluate import run_generate_eval
from .fileio import json_text, read_json
from .html_report import render_tune_report
from .monitor import TrainingDiverged
from .plots import pyplot, save_figure
from .preflight import differences
from .rundir import (
    BEST_CONFIG_FILE,
    HISTORY_PLOT_FILE,
    IMPORTANCE_PLOT_FILE,
    METRICS_FILE,
    REPORT_HTML_FILE,
    SELECTION_FILE,
    STUDY_FILE,
    TRAIN_RESULTS_FILE,
    TRIALS_CSV_FILE,
    TRIALS_DIR,
    TRIALS_MD_FILE,
    RunDir,
)
from .train import run_sft

log = logging.getLogger(__name__)

STUDY_NAME = "instructemo"
DEFAULT_TRIALS = 20
# What a study is about, and what tune sets for every trial: not searchable.
FIXED_KEYS = frozenset(
    {
        "dataset",
        "dataset_dir",
        "select_dataset",
        "eval_dataset",
        "select_best",
        "select_metric",
        "max_select_samples",
        "max_eval_samples",
        "text_column",
        "label_column",
        "labels",
        "output_dir",
        "eval_output_dir",
        "adapter_name_or_path",
        "overwrite_output_dir",
        "resume",
        "do_eval",
        "seed",  # a seed that wins on dev is luck, not a setting
        "tune",
        "nproc_per_node",
        "deepspeed",
    }
)
SETTINGS_KEYS = ("trials", "space", "pruner", "startup_trials", "enqueue")
EVAL_DIR_NAME = "dev_eval"


@dataclass
class TuneSettings:
    trials: int
    space: dict[str, Any]  # key -> optuna distribution
    pruner: str
    startup_trials: int
    enqueue: list[dict]


# --- the search space -------------------------------------------------------------


def tune_settings(cfg: Config) -> TuneSettings:
    """The `tune:` section, checked: every key searchable, every value one the config accepts."""
    raw = cfg.tune
    if not raw:
        raise UserError(
            "the config has no tune: section; add one with a search space, e.g. "
            "tune: {space: {learning_rate: {low: 5.0e-5, high: 1.0e-3, log: true}}}"
        )
    unknown = sorted(set(raw) - set(SETTINGS_KEYS))
    if unknown:
        raise UserError(f"tune: has unknown key(s) {unknown}; it takes {', '.join(SETTINGS_KEYS)}")
    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise UserError("tune.space must map config keys to choices ([a, b]) or ranges ({low: x, high: y})")
    space = {key: _distribution(cfg, key, spec) for key, spec in space_raw.items()}
    trials = raw.get("trials", DEFAULT_TRIALS)
    startup = raw.get("startup_trials", 2)
    for name, value in (("trials", trials), ("startup_trials", startup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "trials" else 0):
            raise UserError(
                f"tune.{name} must be a whole number of at least {1 if name == 'trials' else 0}, got {value!r}"
            )
    pruner = raw.get("pruner", "median")
    if pruner not in ("median", "none"):
        raise UserError(f"tune.pruner must be median or none, got {pruner!r}")
    enqueue = raw.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise UserError("tune.enqueue must be a list of {key: value} settings to try first")
    for settings in enqueue:
        for key, value in settings.items():
            if key not in space:
                raise UserError(f"tune.enqueue sets {key!r}, which is not in tune.space; enqueue only searched keys")
            if not _in_distribution(space[key], value):
                raise UserError(f"tune.enqueue: {key}={value!r} is outside tune.space's {key}")
    return TuneSettings(trials, space, pruner, startup, enqueue)


def _distribution(cfg: Config, key: str, spec: Any):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if key not in FIELDS:
        raise UserError(f"tune.space names {key!r}, which is not a config key")
    if key in FIXED_KEYS:
        raise UserError(f"tune.space may not search {key!r}: tune fixes it for every trial; set it at the top level")
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"tune.space.{key} lists no choices")
        for value in spec:
            _check_setting(cfg, key, value)
        if len({json.dumps(v) for v in spec}) != len(spec):
            raise UserError(f"tune.space.{key} repeats a choice: {spec}")
        return CategoricalDistribution(spec)
    if not isinstance(spec, dict) or set(spec) - {"low", "high", "log", "step"} or not {"low", "high"} <= set(spec):
        raise UserError(
            f"tune.space.{key} must be a list of choices or a range {{low: x, high: y}} (with log: true or step: s)"
        )
    low, high, log_scale, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    low, high = _check_setting(cfg, key, low), _check_setting(cfg, key, high)
    if not isinstance(low, (int, float)) or isinstance(low, bool):
        raise UserError(f"tune.space.{key}: a range needs numbers; {key} takes {low!r}-like values, so list choices")
    if not low < high:
        raise UserError(f"tune.space.{key}: low {low} must be below high {high}")
    if log_scale and low <= 0:
        raise UserError(f"tune.space.{key}: a log range needs low above 0, got {low}")
    if log_scale and step is not None:
        raise UserError(f"tune.space.{key}: give log or step, not both")
    if float not in key_types(key):
        return IntDistribution(int(low), int(high), log=log_scale, step=int(step or 1))
    return FloatDistribution(float(low), float(high), log=log_scale, step=float(step) if step is not None else None)


def _check_setting(cfg: Config, key: str, value: Any) -> Any:
    """`value` as the config takes it for `key` (checked with the rest of the config, as a trial would be)."""
    try:
        return getattr(make_config({**_base_values(cfg), key: value}), key)
    except UserError as exc:
        raise UserError(f"tune.space.{key}: {exc}") from None


def _in_distribution(distribution, value: Any) -> bool:
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return distribution.low <= value <= distribution.high


def _base_values(cfg: Config) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k != "tune"}


def trial_config(cfg: Config, params: dict, output_dir: Path, resume: bool) -> Config:
    """The config one trial trains: the base config, the trial's values, its own output_dir, never the test split."""
    stage = params.get("stage", cfg.stage)
    return make_config(
        {
            **_base_values(cfg),
            **params,
            "output_dir": str(output_dir),
            "select_best": stage == "sft",  # its dev evaluations are the trial's intermediate values
            "do_eval": False,
            "eval_output_dir": None,
            "adapter_name_or_path": None,
            "overwrite_output_dir": False,
            "resume": "auto" if resume else "none",
        }
    )


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
    if dev == split_location(cfg.dataset, cfg.dataset_dir, "train", **options):
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
        while counted_trials(study) < trials:
            _run_trial(cfg, settings, study, run)
            write_outputs(cfg, study, run)
        write_outputs(cfg, study, run)
        run.publish(lambda staging: None)  # every file is in place: the search is complete up to `trials`
    best = _best(study)
    print((run.path / TRIALS_MD_FILE).read_text())
    return best or {}


def _run_trial(cfg: Config, settings: TuneSettings, study, run: RunDir) -> None:
    from optuna.trial import TrialState

    trial = study.ask(settings.space)
    retry_of = trial.user_attrs.get("retry_of")
    output_dir = Path(trial.user_attrs.get("output_dir") or run.path / TRIALS_DIR / f"trial-{trial.number:03d}")
    trial.set_user_attr("output_dir", str(output_dir))
    trial_cfg = trial_config(cfg, trial.params, output_dir, resume=retry_of is not None)
    shown = ", ".join(f"{k}={_show(v)}" for k, v in trial.params.items())
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
    except (TrainingDiverged, torch.OutOfMemoryError) as exc:
        trial.set_user_attr("failure", str(exc).splitlines()[0][:300])
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        study.tell(trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", trial.number, trial.user_attrs["failure"])
        return
    on_selection(history)  # the points a resumed or already finished run scored before this session
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
    trial.set_user_attr("train_seconds", read_json(output_dir / TRAIN_RESULTS_FILE)["train_seconds"])
    if pruned_at is not None:
        trial.set_user_attr("pruned_at_step", pruned_at)
        study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d pruned at step %d (dev %s below the median)", trial.number, pruned_at, cfg.select_metric)
        return
    study.tell(trial, value)
    best = study.best_trial
    log.info(
        "trial %d: dev %s %.4f (best: trial %d, %.4f)", trial.number, cfg.select_metric, value, best.number, best.value
    )


def _train_and_score(trial_cfg: Config, on_selection) -> tuple[float, list[dict], int | None]:
    """Train one trial (or finish it, when resumed): (dev value, the dev evaluations, the step it was pruned at)."""
    run = RunDir(trial_cfg.output_dir)
    if not run.is_complete():
        run_sft(trial_cfg, on_selection=on_selection if trial_cfg.stage == "sft" else None)
    metric = trial_cfg.select_metric
    if trial_cfg.stage == "sft":
        selection = read_json(run.path / SELECTION_FILE)
        return selection["best"][metric], selection["history"], selection.get("stopped_early_at")
    eval_dir = run.path / EVAL_DIR_NAME
    if not RunDir(eval_dir).is_complete():
        dev_cfg = dataclasses.replace(
            trial_cfg,
            eval_dataset=run_spec(trial_cfg, "dev"),
            max_eval_samples=trial_cfg.max_select_samples,
            eval_output_dir=str(eval_dir),
        )
        run_generate_eval(dev_cfg)
    return read_json(eval_dir / METRICS_FILE)["metrics"][metric], [], None


# --- what tune writes ---------------------------------------------------------------


def trial_rows(study, metric: str) -> list[dict]:
    """One row per trial: its number, state, value, settings, cost, and what became of it."""
    retried = {t.user_attrs.get("retry_of"): t.number for t in study.trials if "retry_of" in t.user_attrs}
    keys = list(dict.fromkeys(k for t in study.trials for k in t.distributions))
    rows = []
    for t in study.trials:
        state = t.state.name.lower()
        note = ""
        if t.number in retried:
            state, note = "interrupted", f"tried again as trial {retried[t.number]}"
        elif "failure" in t.user_attrs:
            note = t.user_attrs["failure"]
        elif "pruned_at_step" in t.user_attrs:
            note = f"pruned at step {t.user_attrs['pruned_at_step']}"
        if "retry_of" in t.user_attrs:
            note = f"resumes trial {t.user_attrs['retry_of']}" + (f"; {note}" if note else "")
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append(
            {
                "trial": t.number,
                "state": state,
                # a pruned trial's value is only where it stopped: its last_dev column says so
                f"dev_{metric}": round(t.value, 4) if t.state.name == "COMPLETE" else None,
                "last_step": last,
                f"last_dev_{metric}": round(t.intermediate_values[last], 4) if last is not None else None,
                **{k: t.params.get(k) for k in keys},
                "train_minutes": round(t.user_attrs["train_seconds"] / 60, 2)
                if "train_seconds" in t.user_attrs
                else None,
                "note": note,
            }
        )
    return rows


def trials_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def trials_markdown(rows: list[dict], title: str) -> str:
    lines = [f"# {title}", ""]
    if rows:
        columns = list(rows[0])
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_show(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _best(study) -> dict | None:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    return {
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "output_dir": best.user_attrs.get("output_dir"),
    }


def best_config_text(cfg: Config, best: dict) -> str:
    """best.yaml: the best trial's config, as the keys that differ from the defaults, trained into output_dir/best."""
    trial_cfg = trial_config(cfg, best["params"], Path(cfg.output_dir) / "best", resume=False)
    values = {
        k: v
        for k, v in trial_cfg.to_dict().items()
        if v != FIELDS[k].default and k not in ("tune", "resume", "overwrite_output_dir")
    }
    header = (
        f"# The best trial of instructemo tune in {cfg.output_dir}: trial {best['trial']}, dev "
        f"{cfg.select_metric} {best['value']:.4f} on {run_spec(cfg, 'dev')}.\n"
        f"# Its trained run is {best['output_dir'] or '(not recorded: a trial added to the study by hand)'}. "
        f"Train it again with: instructemo sft {Path(cfg.output_dir) / BEST_CONFIG_FILE}\n"
        f"# and judge it once on the held-out test split with do_eval=true.\n"
    )
    return header + yaml.safe_dump(values, sort_keys=False)


def write_outputs(cfg: Config, study, run: RunDir) -> None:
    """The trials table (CSV, markdown), best.yaml, the plots and report.html, each replaced whole."""
    metric = cfg.select_metric
    rows = trial_rows(study, metric)
    best = _best(study)
    title = f"instructemo tune: {len(rows)} trials, dev {metric} on {run_spec(cfg, 'dev')}"
    run.write_file(TRIALS_CSV_FILE, trials_csv(rows))
    run.write_file(TRIALS_MD_FILE, trials_markdown(rows, title))
    if best is not None:
        run.write_file(BEST_CONFIG_FILE, best_config_text(cfg, best))
    figures = []
    for name, title_text, draw in (
        (HISTORY_PLOT_FILE, "Optimisation history", _history_figure),
        (IMPORTANCE_PLOT_FILE, "Parameter importances", _importance_figure),
    ):
        fig = draw(study, metric)
        if fig is None:
            continue
        run.record(files=[name])
        save_figure(fig, run.path / name)
        figures.append((title_text, _png_uri(run.path / name)))
    run.write_file(
        REPORT_HTML_FILE,
        render_tune_report(title, rows, best, figures, {"dev split": run_spec(cfg, "dev"), "metric": metric}),
    )


def _png_uri(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _completed(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _history_figure(study, metric: str):
    if not _completed(study):
        return None
    from optuna.visualization.matplotlib import plot_optimization_history

    with _optuna_plotting():
        axes = plot_optimization_history(study, target_name=f"dev {metric}")
    return _sized(axes)


def _importance_figure(study, metric: str):
    """Parameter importances (PED-ANOVA, Optuna's default), once two finished trials differ in some setting."""
    done = _completed(study)
    varied = [k for k in {k for t in done for k in t.params} if len({json.dumps(t.params.get(k)) for t in done}) > 1]
    if len(done) < 2 or not varied:
        return None
    from optuna.visualization.matplotlib import plot_param_importances

    with _optuna_plotting():
        try:
            axes = plot_param_importances(study, target_name=f"dev {metric}")
        except (RuntimeError, ValueError) as exc:  # too few distinct values for the evaluator
            log.info("parameter importances not drawn: %s", exc)
            return None
    return _sized(axes)


@contextmanager
def _optuna_plotting():
    """Optuna's matplotlib plots, drawn headless; the ggplot style they switch on stays inside."""
    plt = pyplot()  # the Agg backend, before Optuna imports pyplot
    with warnings.catch_warnings(), plt.style.context("default"):
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        yield


def _sized(axes):
    fig = axes.figure
    fig.set_size_inches(7, 4)
    fig.tight_layout()
    return fig
