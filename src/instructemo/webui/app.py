"""`instructemo webui`: the CLI's verbs behind five tabs (Train, Evaluate, Try, Compare, Audit), in Gradio.

Nothing here decides anything about data or models. A training or an
evaluation is the CLI's command, run as a job (jobs.py) from a YAML file the
page writes and shows; a file's columns and label counts come from
tools.describe_dataset, the report from html_report.report_parts, a try from
tools.classify_texts, the table from compare.compare_runs, an audit is the
CLI's `audit` run as a job and shown from its summary.json and issues.csv. Their one-line
errors are what the page shows.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import secrets
import shutil
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import yaml

from instructemo.config.schema import WEBUI_KEYS, Config, load_config, make_config
from instructemo.data.datasets import load_registry
from instructemo.errors import UserError
from instructemo.models.load import ALIASES, DIRECTORY_ALIASES
from instructemo.report.html import report_parts
from instructemo.run.directory import (
    AUDIT_DIR,
    AUDIT_HTML_FILE,
    AUDIT_ISSUES_FILE,
    AUDIT_SUMMARY_FILE,
    COMPARE_MD_FILE,
    COMPARE_PLOT_FILE,
    CONFIG_FILE,
    EVAL_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    TRAINER_LOG_FILE,
    RunDir,
)
from instructemo.run.fileio import read_json, read_jsonl, write_atomic
from instructemo.verbs.compare import compare_runs
from instructemo.verbs.tools import classify_texts, describe_dataset, hold_out, load_scorer
from instructemo.webui.access import DATA_FILE_TYPES, check_launch, check_run_name, check_upload
from instructemo.webui.jobs import JobQueue, live_progress

log = logging.getLogger(__name__)

UPLOAD = "(an uploaded file)"
# The training settings on the page: the YAML's own keys (declared webui on the field), with their defaults and help.
SETTINGS = WEBUI_KEYS
FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def shows_errors(handler):
    """A handler whose UserError (or any failure) reaches the page as one line, never as a traceback."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            result = handler(*args, **kwargs)
            if hasattr(result, "__next__"):
                yield from result
            else:
                yield result
        except UserError as exc:
            raise gr.Error(f"instructemo: error: {exc}", print_exception=False) from None
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - the page shows one line; the server log keeps the traceback
            log.exception("webui handler %s failed", handler.__name__)
            raise gr.Error(f"instructemo: error: {type(exc).__name__}: {exc}", print_exception=False) from None

    return wrapped


class WebUI:
    def __init__(self, workdir: Path, dataset_dir: str):
        self.workdir = Path(workdir)
        self.dataset_dir = dataset_dir
        self.jobs = JobQueue(self.workdir / "jobs")
        self._scorers: dict[str, tuple[float, object]] = {}
        self._upload_salt = secrets.token_bytes(16)  # kept uploads' names: the same file twice, one name no one guesses

    # --- data -----------------------------------------------------------------

    def dataset_choices(self) -> list[str]:
        return [*load_registry(self.dataset_dir), UPLOAD]

    def keep_upload(self, temp_path: str) -> Path:
        """The uploaded data file, copied under the workdir with a salted hash of its content in the name (never
        over another, and never at a name the uploader can compute)."""
        source = Path(temp_path)
        check_upload(source)
        digest = hashlib.sha256(self._upload_salt + source.read_bytes()).hexdigest()[:16]
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.stem)[:60] or "data"
        kept = self.workdir / "data" / f"{stem}-{digest}{source.suffix.lower()}"
        if not kept.is_file():
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, kept)
        return kept

    def describe(self, dataset: str, upload: str | None, text_column: str, label_column: str):
        spec = self._spec(dataset, upload)
        info = describe_dataset(spec, self.dataset_dir, text_column or None, label_column or None)
        counts = pd.DataFrame({"label": list(info["label_counts"]), "rows": list(info["label_counts"].values())})
        kind = "multi-label" if info["multi_label"] else "single-label"
        text = (
            f"**{info['rows']} rows**, {kind}, {len(counts)} labels, from `{info['from']}`  \n"
            f"text column `{info['text_column']}`, label column `{info['label_column']}`"
        )
        if info["texts_with_conflicting_labels"]:
            text += f"  \n{info['texts_with_conflicting_labels']} text(s) appear again with other labels"
        return text, counts

    def _spec(self, dataset: str, upload: str | None) -> str:
        if dataset != UPLOAD:
            return dataset
        if not upload:
            raise UserError("upload a CSV, TSV or JSONL file first, or pick a registered dataset")
        return str(self.keep_upload(upload))

    # --- train ----------------------------------------------------------------

    def config_values(self, dataset, upload, text_column, label_column, test_fraction, model, run_name, *settings):
        """The run's YAML keys: the dataset (with a held-out test split for an uploaded file) and the settings."""
        check_run_name(run_name)
        spec = self._spec(dataset, upload)
        values = {"model_name_or_path": model, "dataset": spec}
        if self.dataset_dir != FIELDS["dataset_dir"].default:
            values["dataset_dir"] = self.dataset_dir  # --dataset-dir: the job reads the registry the page showed
        columns = {"text_column": text_column or None, "label_column": label_column or None}
        if dataset == UPLOAD:
            train, test = hold_out(spec, self.dataset_dir, float(test_fraction), 42, self.workdir / "data", **columns)
            values.update(dataset=str(train), eval_dataset=str(test))
        else:
            values.update({k: v for k, v in columns.items() if v})
        for key, value in zip(SETTINGS, settings):
            values[key] = value
        rows = str(values["max_samples"] or "").strip()
        if rows and not rows.isdigit():
            raise UserError(f"max_samples {rows!r}: a whole number of training rows, or blank for all of them")
        values["max_samples"] = int(rows) if rows else None
        values["output_dir"] = str(self.workdir / "runs" / run_name)
        if values["finetuning_type"] not in ("lora", "qlora"):
            values.pop("lora_rank")
        return values

    def start(self, *inputs):
        values = self.config_values(*inputs)
        run = Path(values["output_dir"])
        path = self.workdir / "configs" / f"{run.name}.yaml"
        text = yaml.safe_dump({k: v for k, v in values.items() if v is not None or k == "max_samples"}, sort_keys=False)
        make_config(yaml.safe_load(text))  # the checks `instructemo sft` makes of this YAML, first
        # and of its output_dir: the YAML of a run that exists is never replaced by one that would be refused
        RunDir(run).check_can_begin("train", replace=values["overwrite_output_dir"], keep=values["resume"] != "none")
        write_atomic(path, text)
        job = self.jobs.submit("sft", [str(path)], output_dir=run)
        return job.id, text, str(path), f"job {job.id} queued: `{job.command}`"

    def progress(self, job_id):
        jobs = pd.DataFrame([j.summary() for j in reversed(self.jobs.jobs)] or None, columns=JOB_COLUMNS)
        job = self.jobs.get(job_id) if job_id else None
        if job is None:
            return "No training started yet.", _loss_frame([]), jobs
        live = live_progress(job.output_dir)
        status = f"job {job.id}: **{job.state}**"
        if live["max_steps"]:
            status += f", step {live['step']} of {live['max_steps']}"
            if job.state == "running" and live["eta_seconds"] is not None:
                status += f", about {_minutes(live['eta_seconds'])} left"
        if job.state == "failed":
            status += f"  \ninstructemo: error: {job.error()}"
        if job.state in ("stopping", "stopped"):
            status += "  \nstopped: the run is kept incomplete; set resume to auto and Start to continue it"
        return status, _loss_frame(live["points"]), jobs

    def stop(self, job_id):
        job = self.jobs.stop(job_id) if job_id else None
        return f"job {job.id}: stopping" if job else "no job to stop"

    # --- runs, evaluate, try, compare --------------------------------------------

    def runs(self, evaluated: bool = False) -> list[str]:
        found = []
        for root in (self.workdir / "runs", Path("saves")):
            for path in sorted(root.glob("*")) + sorted(root.glob("*/*")):
                if path.is_dir() and (path / CONFIG_FILE).is_file() and RunDir(path).is_complete():
                    if not evaluated or (path / EVAL_DIR / METRICS_FILE).is_file():
                        found.append(str(path))
        return list(dict.fromkeys(found))

    def listed_run(self, run: str | None, purpose: str) -> str:
        """`run`, when it is one of the finished runs the page lists; a typed path to anything else is refused."""
        if not run:
            raise UserError(f"pick a trained run to {purpose}")
        if run not in self.runs():
            raise UserError(
                f"{run!r} is not a finished run of this page (under {self.workdir / 'runs'} or saves/); pick one from the list"
            )
        return run

    def _job(self, verb: str, args: list[str], outputs: int):
        """The CLI's verb as a job: yields its state (and `outputs` empty outputs) until it ends, then returns it;
        a failed job raises the CLI's one-line error."""
        job = self.jobs.submit(verb, args)
        while not job.finished:
            yield (f"job {job.id}: {job.state} `{job.command}`", *[None] * outputs)
            time.sleep(1.0)
        if job.state != "done":
            raise UserError(job.error() or f"job {job.id} {job.state}")
        return job

    def evaluate(self, run: str, mode: str):
        run = self.listed_run(run, "evaluate")
        args = [run] + ([f"mode={mode}"] if mode != "auto" else [])  # a run's folder stands for its config
        job = yield from self._job("generate-eval", args, outputs=4)
        yield (f"job {job.id}: done", *self.report(run))

    def report(self, run: str):
        eval_dir = Path(run) / EVAL_DIR
        evaluation = read_json(eval_dir / METRICS_FILE)
        history = read_jsonl(Path(run) / TRAINER_LOG_FILE) if (Path(run) / TRAINER_LOG_FILE).is_file() else None
        parts = report_parts(read_jsonl(eval_dir / PREDICTIONS_FILE), evaluation["metrics"], history)
        summary = pd.DataFrame(
            [{"metric": k, "value": round(v, 4) if isinstance(v, float) else v} for k, v in parts["summary"].items()]
            + [{"metric": "held_out", "value": _held_out(evaluation)}]
        )
        per_class = pd.DataFrame(
            [
                {"label": n, **{k: round(v, 4) for k, v in m.items()}}
                for n, m in evaluation["metrics"]["per_class"].items()
            ]
        )
        figures = "".join(
            f'<figure><figcaption><b>{title}</b></figcaption><img alt="{title}" src="{uri}" style="max-width:100%"></figure>'
            for title, uri in parts["figures"]
        )
        return summary, per_class, figures, pd.DataFrame(parts["mistakes"])

    def last_report(self, run: str):
        """The run's last evaluation, when it has one (empty otherwise)."""
        if run and (Path(self.listed_run(run, "show")) / EVAL_DIR / METRICS_FILE).is_file():
            return ("the last evaluation of this run", *self.report(run))
        return ("no evaluation yet: press Evaluate", None, None, "", None)

    def scorer(self, run: str):
        config = Path(run) / CONFIG_FILE
        stamp = config.stat().st_mtime
        if run not in self._scorers or self._scorers[run][0] != stamp:
            self._scorers.clear()  # one model in memory: the run being tried
            cfg = load_config(run)
            self._scorers[run] = (stamp, (cfg, load_scorer(cfg)))
        return self._scorers[run][1]

    def try_text(self, run: str, text: str):
        cfg, classifier = self.scorer(self.listed_run(run, "try"))
        result = classify_texts(cfg, [text], classifier)[0]
        chosen = ", ".join(result["labels"]) or "(no label)"
        return result["probabilities"], f"predicted: **{chosen}**"

    def predict_file(self, run: str, upload: str | None):
        run = self.listed_run(run, "label the file with")
        if not upload:
            raise UserError("upload a file of texts to label")
        source = self.keep_upload(upload)
        out = self.workdir / "predictions" / f"{source.stem}-{Path(run).name}-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        args = [run, "--input", str(source), "--output", str(out)]
        job = yield from self._job("predict", args, outputs=1)
        yield f"job {job.id}: done, {out.name}", str(out)

    def compare(self, runs: list[str]):
        for run in runs or []:
            self.listed_run(run, "compare")
        out = self.workdir / "compare"
        compare_runs([Path(r) for r in runs or []], out)
        return (out / COMPARE_MD_FILE).read_text(), str(out / COMPARE_PLOT_FILE)

    def audit(self, run: str, folds, split: str, again: bool):
        """instructemo audit of the data a run trained on, with its recipe, as a job; then its findings."""
        run = self.listed_run(run, "audit the data of")
        out = self.workdir / "audits" / Path(run).name
        if RunDir(out / AUDIT_DIR).is_complete() and not again:
            yield ("the last audit of this run's data (tick 'again' to audit anew)", *self.audit_report(out))
            return
        # mode=score: a generative recipe's probabilities (a head has its own); the audit needs them.
        args = [run, f"output_dir={out}", "mode=score", "--folds", str(int(folds)), "--split", split]
        if again:
            args.append("overwrite_output_dir=true")
        job = yield from self._job("audit", args, outputs=4)
        yield (f"job {job.id}: done", *self.audit_report(out))

    def audit_report(self, out: Path):
        folder = out / AUDIT_DIR
        summary = read_json(folder / AUDIT_SUMMARY_FILE)
        splits = pd.DataFrame(
            [
                {
                    "split": role,
                    "rows": part["rows"],
                    "flagged": part["flagged"],
                    "share flagged": round(part["flagged_share"], 4),
                    "audit model, held out": round(part["held_out_accuracy"], 4),
                    "probabilities": part["probabilities"],
                    "warning": part.get("warning", ""),
                }
                for role, part in summary["splits"].items()
            ]
        )
        per_class = pd.DataFrame(
            [
                {"split": role, "label": name, **row}
                for role, part in summary["splits"].items()
                for name, row in part["per_class"].items()
            ]
        )
        issues = pd.read_csv(folder / AUDIT_ISSUES_FILE, keep_default_na=False).head(200)
        issues = issues[["rank", "split", "id", "text", "given", "suggested", "self_confidence"]]  # source: in the file
        return splits, per_class, issues, [str(folder / AUDIT_ISSUES_FILE), str(folder / AUDIT_HTML_FILE)]


JOB_COLUMNS = ["job", "state", "command", "minutes", "error"]


def _held_out(evaluation: dict) -> str:
    """Whether the evaluated rows played no part in training, as metrics.json says it."""
    said = "yes" if evaluation.get("held_out") else "no: also used for " + ", ".join(evaluation["also_used_for"])
    seen = evaluation.get("texts_in_training")
    return said + (f" ({seen} texts also among the training rows)" if seen else "")


def _loss_frame(points: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({"step": [p["step"] for p in points], "loss": [p["loss"] for p in points]})


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _setting(key: str):
    spec = FIELDS[key]
    default, info = spec.default, spec.metadata.get("help", "")
    choices = spec.metadata.get("choices")
    common = {"label": key, "info": info, "elem_id": f"setting-{key}"}
    if isinstance(default, bool):
        return gr.Checkbox(value=default, **common)
    if choices and len(choices) > 1:
        return gr.Dropdown(list(choices), value=default, **common)
    if key == "resume":
        return gr.Dropdown(["none", "auto"], value=default, **common)
    if key == "max_samples":
        return gr.Textbox(value="", placeholder="all rows", **common)
    if isinstance(default, (int, float)):
        return gr.Number(value=default, precision=0 if isinstance(default, int) else None, **common)
    return gr.Textbox(value=str(default), **common)


def build(ui: WebUI) -> gr.Blocks:
    models = [*ALIASES, *DIRECTORY_ALIASES]
    with gr.Blocks(title="instructemo") as page:
        gr.Markdown("# instructemo\nTrain, evaluate and try an emotion or sentiment classifier.")
        job_id = gr.State(None)
        with gr.Tab("Train"):
            with gr.Row():
                with gr.Column():
                    dataset = gr.Dropdown(ui.dataset_choices(), value="emotion", label="dataset")
                    upload = gr.File(
                        label="CSV, TSV, JSONL or text;label file",
                        file_types=list(DATA_FILE_TYPES),
                    )
                    with gr.Row():
                        text_column = gr.Textbox(label="text_column", placeholder="detected")
                        label_column = gr.Textbox(label="label_column", placeholder="detected")
                    test_fraction = gr.Slider(0.05, 0.5, 0.2, step=0.05, label="test split held out of a file")
                    check = gr.Button("Check the data")
                    data_info = gr.Markdown(elem_id="data-info")
                    counts = gr.BarPlot(x="label", y="rows", y_lim=[0, None], label="label counts", height=220)
                with gr.Column():
                    model = gr.Dropdown(
                        models,
                        value=FIELDS["model_name_or_path"].default,
                        allow_custom_value=True,
                        label="model_name_or_path",
                        info=FIELDS["model_name_or_path"].metadata["help"],
                    )
                    run_name = gr.Textbox(value="my-run", label="run name (output_dir under the webui's runs/)")
                    settings = [_setting(key) for key in SETTINGS]
            with gr.Row():
                start = gr.Button("Start", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            status = gr.Markdown("No training started yet.", elem_id="train-status")
            loss = gr.LinePlot(x="step", y="loss", label="training loss", height=260, elem_id="loss-plot")
            with gr.Accordion("The run's YAML (instructemo sft FILE reproduces it)", open=False):
                yaml_text = gr.Code(language="yaml", label="config")
                yaml_file = gr.File(label="download")
            jobs = gr.Dataframe(
                pd.DataFrame(columns=JOB_COLUMNS),
                label="jobs (one runs at a time; the others wait)",
                interactive=False,
            )
        with gr.Tab("Evaluate"):
            with gr.Row():
                eval_run = gr.Dropdown(ui.runs(), label="run", allow_custom_value=True)
                eval_mode = gr.Dropdown(["auto", "generate", "score"], value="auto", label="mode")
                refresh = gr.Button("Refresh runs")
            evaluate = gr.Button("Evaluate", variant="primary")
            eval_status = gr.Markdown()
            summary = gr.Dataframe(label="metrics", interactive=False)
            per_class = gr.Dataframe(label="per class", interactive=False)
            figures = gr.HTML(elem_id="report-figures")
            mistakes = gr.Dataframe(label="most confident mistakes", interactive=False, wrap=True)
        with gr.Tab("Try"):
            try_run = gr.Dropdown(ui.runs(), label="run", allow_custom_value=True)
            text = gr.Textbox(label="text", lines=3, placeholder="i feel wonderful today")
            classify = gr.Button("Classify", variant="primary")
            chosen = gr.Markdown(elem_id="try-chosen")
            probabilities = gr.Label(label="probabilities", num_top_classes=10, elem_id="try-label")
            texts_file = gr.File(
                label="a file of texts to label (CSV, TSV or JSONL)",
                file_types=list(DATA_FILE_TYPES),
                elem_id="try-file",
            )
            predict = gr.Button("Predict the file")
            predict_status = gr.Markdown(elem_id="predict-status")
            predictions = gr.File(label="predictions")
        with gr.Tab("Compare"):
            compare_runs_choice = gr.Dropdown(ui.runs(evaluated=True), multiselect=True, label="evaluated runs")
            compare = gr.Button("Compare", variant="primary")
            table = gr.Markdown()
            plot = gr.Image(label="per-class F1", type="filepath")
        with gr.Tab("Audit"):
            gr.Markdown(
                "Rows whose labels look wrong in the data a run trained on: K models of the run's recipe, each "
                "trained without one fold, score the fold they never saw; cleanlab flags the rows whose label "
                "the probabilities contradict. A flag is a row to review, not a verdict."
            )
            with gr.Row():
                audit_run = gr.Dropdown(ui.runs(), label="run (its data and recipe)", allow_custom_value=True)
                audit_folds = gr.Number(value=5, precision=0, minimum=2, label="folds")
                audit_split = gr.Dropdown(["train", "test", "all"], value="train", label="rows to audit")
                audit_again = gr.Checkbox(value=False, label="again (retrain the folds)")
            audit_button = gr.Button("Audit", variant="primary")
            audit_status = gr.Markdown(elem_id="audit-status")
            audit_splits = gr.Dataframe(label="flagged rows per split", interactive=False)
            audit_classes = gr.Dataframe(label="flagged rows per label", interactive=False)
            audit_issues = gr.Dataframe(
                label="flagged rows, the least likely labels first", interactive=False, wrap=True
            )
            audit_files = gr.File(
                label="issues.csv (an exclusion list once reviewed) and audit.html", file_count="multiple"
            )

        check.click(shows_errors(ui.describe), [dataset, upload, text_column, label_column], [data_info, counts])
        inputs = [dataset, upload, text_column, label_column, test_fraction, model, run_name, *settings]
        start.click(shows_errors(ui.start), inputs, [job_id, yaml_text, yaml_file, status])
        stop.click(shows_errors(ui.stop), [job_id], [status])
        gr.Timer(1.0).tick(ui.progress, [job_id], [status, loss, jobs])

        def refreshed():
            runs, evaluated = ui.runs(), ui.runs(evaluated=True)
            return (
                gr.update(choices=runs),
                gr.update(choices=runs),
                gr.update(choices=evaluated),
                gr.update(choices=runs),
            )

        run_lists = [eval_run, try_run, compare_runs_choice, audit_run]
        refresh.click(refreshed, None, run_lists)
        page.load(refreshed, None, run_lists)
        report = [eval_status, summary, per_class, figures, mistakes]
        eval_run.input(shows_errors(ui.last_report), [eval_run], report)
        evaluate.click(shows_errors(ui.evaluate), [eval_run, eval_mode], report)
        classify.click(shows_errors(ui.try_text), [try_run, text], [probabilities, chosen])
        predict.click(shows_errors(ui.predict_file), [try_run, texts_file], [predict_status, predictions])
        compare.click(shows_errors(ui.compare), [compare_runs_choice], [table, plot])
        audit_button.click(
            shows_errors(ui.audit),
            [audit_run, audit_folds, audit_split, audit_again],
            [audit_status, audit_splits, audit_classes, audit_issues, audit_files],
        )
    return page


def run_webui(
    host: str,
    port: int,
    workdir: str,
    dataset_dir: str,
    max_upload_mb: int,
    auth: str | None = None,
    insecure_no_auth: bool = False,
) -> None:
    credentials = check_launch(host, port, workdir, max_upload_mb, auth, insecure_no_auth)
    ui = WebUI(Path(workdir), dataset_dir)
    page = build(ui)
    page.queue(default_concurrency_limit=2)
    log.info("instructemo webui on http://%s:%d (runs in %s)", host, port, workdir)
    page.launch(
        server_name=host,
        server_port=port,
        auth=[credentials] if credentials else None,
        max_file_size=f"{max_upload_mb}mb",
        show_error=True,
        quiet=True,
        footer_links=[],
        allowed_paths=[str(Path(workdir).resolve())],
    )
