"""What tune writes after each trial: the trials table (CSV, markdown), best.yaml, Optuna's plots, report.html."""

from __future__ import annotations

import base64
import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from instructemo.config.schema import FIELDS, Config
from instructemo.data.datasets import run_spec
from instructemo.report.html import render_tune_report
from instructemo.report.plots import pyplot, save_figure
from instructemo.run.directory import (
    BEST_CONFIG_FILE,
    HISTORY_PLOT_FILE,
    IMPORTANCE_PLOT_FILE,
    REPORT_HTML_FILE,
    TRIALS_CSV_FILE,
    TRIALS_MD_FILE,
    RunDir,
)
from instructemo.run.fileio import csv_text
from instructemo.tune.space import trial_config

log = logging.getLogger(__name__)


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
    return csv_text(rows, rows[0]) if rows else ""


def trials_markdown(rows: list[dict], title: str) -> str:
    lines = [f"# {title}", ""]
    if rows:
        columns = list(rows[0])
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(show(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def best_trial(study) -> dict | None:
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
    best = best_trial(study)
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
