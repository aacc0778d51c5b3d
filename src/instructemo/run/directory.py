"""The run directory: every file a run writes, whether the run finished, and what instructemo may delete.

Every directory instructemo writes into (a training `output_dir`, an
evaluation folder, a cross-validation folder) holds a manifest,
`instructemo_run.json`, written before anything else. It is the one test for
"this directory is instructemo's", it lists every file and folder the run
wrote, and it says whether the run is complete:

- a new run refuses a non-empty directory that is not instructemo's;
- `overwrite_output_dir` removes what the manifest lists, and nothing else. A
  folder is listed when the run starts writing it and sealed when it is whole:
  its files are then listed one by one, so a file a user puts into a finished
  checkpoint or evaluation folder stops the overwrite. A folder left unsealed by
  a kill part-way through writing it is the run's, whole;
- the final files are written into a staging folder inside the directory and
  moved into place only when all of them are there; the manifest turns
  `complete` last. A kill or a full disk at any moment leaves either a complete
  run or a directory marked incomplete, and every reading verb refuses the latter.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

from instructemo.errors import UserError
from instructemo.run.fileio import json_text, jsonl_text, read_json, write_atomic

log = logging.getLogger(__name__)

MANIFEST_FILE = "instructemo_run.json"
# Files of a training run.
CONFIG_FILE = "instructemo_config.yaml"
LABEL_SPACE_FILE = "label_space.json"
PROMPT_TEMPLATE_FILE = "prompt_template.jinja"  # the prompt template's text as trained (stage: sft)
THRESHOLDS_FILE = "thresholds.json"
SELECTION_FILE = "selection.json"
TRAIN_RESULTS_FILE = "train_results.json"
TRAINER_LOG_FILE = "trainer_log.jsonl"
# While training runs: one JSON line per logging step (step, loss, seconds), for a live view (webui).
LIVE_LOG_FILE = "instructemo_live.jsonl"
LOSS_PLOT_FILE = "loss.png"
SKIPPED_ROWS_FILE = "skipped_rows.jsonl"
DATA_FILES_FILE = "data_files.json"  # each split's file in full and its SHA-256 (data/recorded.py)
TENSORBOARD_DIR = "runs"
EVAL_DIR = "eval"
# In every checkpoint-N: what the run was (for resume) and how long it had trained.
PROGRESS_FILE = "instructemo_progress.json"
# In each checkpoint with select_best: the selection so far, and the best weights (so a resume keeps the run's best).
SELECTION_STATE_FILE = "instructemo_selection.json"
BEST_WEIGHTS_FILE = "instructemo_best_weights.safetensors"
# Files of an evaluation.
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
REPORT_MD_FILE = "report.md"
REPORT_HTML_FILE = "report.html"
# Files of a cross-validation.
CV_DIR = "cv"
AUDIT_DIR = "audit"  # output_dir/audit: instructemo audit's flagged rows (issues.csv is also an exclusion list)
AUDIT_ISSUES_FILE = "issues.csv"
AUDIT_SUMMARY_FILE = "summary.json"
AUDIT_HTML_FILE = "audit.html"
CV_SUMMARY_FILE = "summary.json"
CV_SUMMARY_MD_FILE = "summary.md"

# Files of a hyperparameter search (instructemo tune).
STUDY_FILE = "study.db"
TUNE_LOCK_FILE = "tune.lock"
TRIALS_DIR = "trials"
TRIALS_CSV_FILE = "trials.csv"
TRIALS_MD_FILE = "trials.md"
BEST_CONFIG_FILE = "best.yaml"
HISTORY_PLOT_FILE = "optimization_history.png"
IMPORTANCE_PLOT_FILE = "param_importances.png"

# What `instructemo export` writes beside the model: how it was made and the dtype its figures came from.
EXPORT_FILE = "instructemo_export.json"

COMPARE_MD_FILE = "compare.md"
COMPARE_JSON_FILE = "compare.json"
COMPARE_PLOT_FILE = "per_class_f1.png"

# transformers' and peft's names for a saved model, which other tools read too.
MODEL_CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

STAGING_DIR = ".instructemo-staging"
COMPLETE, INCOMPLETE = "complete", "incomplete"
KINDS = {
    "train": "training run",
    "eval": "evaluation",
    "cv": "cross-validation",
    "audit": "label audit",
    "compare": "comparison",
    "tune": "hyperparameter search",
}


def skipped_rows_text(skipped) -> str:
    """skipped_rows.jsonl: the rows on_bad_rows: skip left out, with where they are and why."""
    return jsonl_text({"source": row.source, "reason": row.reason} for row in skipped)


# --- the manifest -------------------------------------------------------------------


class RunDir:
    """A directory instructemo writes into, through its manifest."""

    def __init__(self, path: str | Path, what: str = "output_dir"):
        self.path = Path(path)
        self.what = what  # how messages name it: output_dir, eval_output_dir, ...

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def manifest(self) -> dict | None:
        """The manifest, or None when this is not an instructemo directory."""
        if not self.manifest_path.is_file():
            return None
        data = read_json(self.manifest_path)
        if not isinstance(data, dict) or data.get("state") not in (COMPLETE, INCOMPLETE):
            raise UserError(
                f"{self.manifest_path} is not an instructemo manifest; move it away or choose another directory"
            )
        return data

    def is_complete(self) -> bool:
        manifest = self.manifest()
        return manifest is not None and manifest["state"] == COMPLETE

    def require_complete(self) -> None:
        """Refuse, in one line, a directory whose run did not finish (a directory with no manifest passes)."""
        manifest = self.manifest()
        if manifest is None or manifest["state"] == COMPLETE:
            return
        kind = manifest.get("kind", "train")
        if kind == "train":
            fix = "continue it with resume: auto, or train again with overwrite_output_dir: true"
        else:
            fix = "run it again"
        raise UserError(
            f"{self.path} holds an incomplete {KINDS.get(kind, kind)} (it was interrupted or could not "
            f"finish writing); {fix}"
        )

    def check_can_begin(self, kind: str, *, replace: bool = False, keep: bool = False) -> None:
        """Raise if a new `kind` run may not start here; changes nothing.

        `replace`: a previous run of the same kind may be removed (overwrite).
        `keep`: a previous run of the same kind is continued (resume).
        """
        path = self.path
        if path.exists() and not path.is_dir():
            raise UserError(f"{self.what} {path} is a file; choose a directory path")
        _check_writable(path, self.what)
        manifest = self.manifest()
        foreign, evaluations = self._survey(manifest)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            beside = "beside its run " if manifest is not None else ""
            raise UserError(
                f"{self.what} {path} holds files {beside}that instructemo did not write ({shown}); move them "
                "away, or choose a new or empty directory"
            )
        if evaluations and not replace:
            raise UserError(
                f"{self.what} {path} holds an earlier evaluation ({', '.join(p.name for p in evaluations)}) "
                "that would be mistaken for this run's; set overwrite_output_dir: true to replace it, or "
                "choose another directory"
            )
        if manifest is None:
            return
        previous = manifest.get("kind", "train")
        if previous != kind:
            raise UserError(
                f"{self.what} {path} holds an instructemo {KINDS.get(previous, previous)}, not a "
                f"{KINDS[kind]}; choose another directory"
            )
        if not (replace or keep):
            state = "a finished" if manifest["state"] == COMPLETE else "an unfinished"
            resume = ", resume: auto to continue it," if kind == "train" else ""
            raise UserError(
                f"{self.what} {path} already holds {state} {KINDS[kind]}; set overwrite_output_dir: true "
                f"to replace it{resume} or choose another {self.what}"
            )

    def begin(self, kind: str, *, replace: bool = False, keep: bool = False) -> None:
        """Make this directory the new run's, before anything else is written into it.

        Removes a previous run's files when `replace`; keeps them, marked
        incomplete again, when `keep`.
        """
        self.check_can_begin(kind, replace=replace, keep=keep)
        manifest = self.manifest()
        for evaluation in self._survey(manifest)[1]:
            RunDir(evaluation).remove()
            _rmdir_if_empty(evaluation)
        if manifest is not None and not keep:
            self.remove()
            manifest = None
        if manifest is None:
            manifest = {"instructemo": 1, "kind": kind, "files": [], "dirs": []}
        manifest.update(state=INCOMPLETE, started=_now())
        manifest.pop("completed", None)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.path / STAGING_DIR, ignore_errors=True)
            self._write(manifest)
        except OSError as exc:
            raise UserError(
                f"cannot write to {self.what} {self.path} ({exc.strerror}); choose a directory you can write to"
            ) from None

    def record(self, files: Iterable[str] = (), dirs: Iterable[str] = ()) -> None:
        """Add paths (relative to the directory) to what the run wrote, before or as it writes them."""
        manifest = self.manifest()
        if manifest is None:
            raise RuntimeError(f"{self.path} has no manifest to record into")
        manifest["files"] = sorted(set(manifest["files"]) | set(files))
        manifest["dirs"] = sorted(set(manifest["dirs"]) | set(dirs))
        self._write(manifest)

    def write_file(self, name: str, content: str | bytes) -> Path:
        """One file of the run, recorded, then written atomically."""
        self.record(files=[name])
        write_atomic(self.path / name, content)
        return self.path / name

    def staging(self) -> Path:
        """The folder the final files are written into before they are moved into place; recorded first."""
        self.record(dirs=[STAGING_DIR])
        staging = self.path / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        return staging

    def commit(self) -> None:
        """Move the staged files into place and mark the run complete (the manifest's state changes last)."""
        staging = self.path / STAGING_DIR
        staged = sorted(staging.iterdir())
        self.record(files=[p.name for p in staged if not p.is_dir()], dirs=[p.name for p in staged if p.is_dir()])
        for item in staged:
            target = self.path / item.name
            if item.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        staging.rmdir()
        manifest = self.manifest()
        manifest["dirs"] = [d for d in manifest["dirs"] if d != STAGING_DIR]
        self._write(manifest)
        whole = [
            d
            for d in manifest["dirs"]
            if d not in manifest.get("sealed", ()) and (self.path / d).is_dir() and not RunDir(self.path / d).manifest()
        ]
        self.seal(*whole)  # every folder of a finished run is whole: a file added later is the user's
        manifest = self.manifest()
        manifest.update(state=COMPLETE, completed=_now())
        self._write(manifest)

    def publish(self, write: Callable[[Path], None]) -> None:
        """write(staging) puts every final file in the staging folder; then commit()."""
        staging = self.staging()
        try:
            write(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.commit()

    def remove(self) -> None:
        """Delete what the manifest lists, then the manifest; anything else in the directory stays."""
        manifest = self.manifest()
        if manifest is None:
            return
        if manifest["state"] == COMPLETE:  # a kill part-way through must not leave a "complete" run with files missing
            manifest["state"] = INCOMPLETE
            self._write(manifest)
        sealed = set(manifest.get("sealed", ())) & set(manifest["dirs"])
        for name in manifest["dirs"]:
            target = self._inside(name)
            if target is None or not target.exists():
                continue
            if target.is_symlink():
                target.unlink()
            elif RunDir(target).manifest() is not None:
                RunDir(target).remove()
                _rmdir_if_empty(target)
            elif name not in sealed:  # written part-way when the run was killed: all of it is the run's
                shutil.rmtree(target)
        for name in manifest["files"]:
            target = self._inside(name)
            if target is not None:
                target.unlink(missing_ok=True)
        for name in sealed:  # the runs this one made inside its folders (tune's trials) go with it
            for nested in _nested_runs(self.path / name):
                RunDir(nested).remove()
        for name in sealed:
            _prune_empty(self.path / name)
        self.manifest_path.unlink()
        log.info("removed the previous %s in %s", KINDS.get(manifest.get("kind"), "run"), self.path)

    def _write(self, manifest: dict) -> None:
        write_atomic(self.manifest_path, json_text(manifest))

    def _inside(self, name: str) -> Path | None:
        """A recorded entry as a path, if it really lies inside this directory (a hand-edited manifest cannot reach out)."""
        target = self.path / name
        inside = target.parent.resolve().is_relative_to(self.path.resolve())
        if Path(name).is_absolute() or ".." in Path(name).parts or not name.strip("./") or not inside:
            log.warning("%s lists %r, which is not inside the directory; left alone", self.manifest_path, name)
            return None
        return target

    def _survey(self, manifest: dict | None) -> tuple[list[str], list[Path]]:
        """What lies here unrecorded: (paths instructemo did not write, evaluations of no run).

        Foreign paths are found at the top, inside every sealed folder, and in
        the instructemo folders the run holds (its eval/). The run's own
        temporary files (left by a kill) and other instructemo folders (a
        cross-validation, a comparison) are neither: they stay as they are.
        """
        if not self.path.is_dir():
            return [], []
        recorded = {MANIFEST_FILE, STAGING_DIR}
        if manifest is not None:
            recorded |= {Path(name).parts[0] for name in (*manifest["files"], *manifest["dirs"])}
        temporary = tuple(f".{name}." for name in recorded)
        foreign, evaluations = [], []
        for entry in sorted(self.path.iterdir()):
            if entry.name in recorded or entry.name.startswith(temporary):
                continue
            child = RunDir(entry).manifest() if entry.is_dir() and not entry.is_symlink() else None
            if child is None:
                foreign.append(entry.name)
            elif child.get("kind") == "eval":
                evaluations.append(entry)
        if manifest is not None:
            foreign += self._foreign_inside(manifest)
        return foreign, evaluations

    def _foreign_inside(self, manifest: dict) -> list[str]:
        """Files in the run's folders that the manifest does not list: in sealed folders and nested runs."""
        listed = set(manifest["files"])
        foreign = []
        for name in manifest["dirs"]:
            target = self._inside(name)
            if target is None or target.is_symlink() or not target.is_dir():
                continue
            nested = RunDir(target)
            inner = nested.manifest()
            if inner is not None:
                foreign += [f"{name}/{path}" for path in nested._survey(inner)[0]]
            elif name in manifest.get("sealed", ()):
                foreign += [path for path in _walk(target, self.path) if path not in listed]
                for nested_path in _nested_runs(target):
                    inside = RunDir(nested_path)
                    where = nested_path.relative_to(self.path).as_posix()
                    foreign += [f"{where}/{path}" for path in inside._survey(inside.manifest())[0]]
        return foreign

    def seal(self, *dirs: str) -> None:
        """List every file now in these folders (paths relative to the run): they are whole.

        Files of instructemo folders inside them (a trial's run) are their
        manifests' business and are not listed here.
        """
        manifest = self.manifest()
        files = set(manifest["files"])
        for name in dirs:
            files = {f for f in files if not f.startswith(f"{name}/")}
            files |= set(_walk(self.path / name, self.path, skip_temporary=False))  # the run's own, kill or not
        manifest["files"] = sorted(files)
        manifest["sealed"] = sorted(set(manifest.get("sealed", [])) | set(dirs))
        self._write(manifest)


def _walk(folder: Path, root: Path, skip_temporary: bool = True) -> list[str]:
    """Files under folder, relative to root, leaving out instructemo folders (own manifest) and, unless asked not to,
    atomic-write temporaries (`.NAME.xxxx` beside a file NAME being written; a kill leaves them)."""
    found = []
    for current, subdirs, files in os.walk(folder):
        here = Path(current)
        subdirs[:] = sorted(d for d in subdirs if not (here / d / MANIFEST_FILE).is_file())
        for name in sorted(files):
            if skip_temporary and name.startswith(".") and name.count(".") >= 2:
                continue
            found.append((here / name).relative_to(root).as_posix())
    return found


def write_into(directory: Path, name: str, content: str | bytes) -> Path:
    """A file added to a directory: recorded in its manifest when it is instructemo's, written atomically either way."""
    run = RunDir(directory)
    if run.manifest() is not None:
        return run.write_file(name, content)
    write_atomic(Path(directory) / name, content)
    return Path(directory) / name


def _nested_runs(folder: Path) -> list[Path]:
    """The instructemo folders (own manifest) under folder, outermost only."""
    found = []
    for current, subdirs, _ in os.walk(folder):
        here = Path(current)
        nested = [d for d in subdirs if (here / d / MANIFEST_FILE).is_file()]
        found += [here / d for d in sorted(nested)]
        subdirs[:] = [d for d in subdirs if d not in nested]
    return found


def _prune_empty(folder: Path) -> None:
    """Remove folder and the folders under it that are now empty, deepest first."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for current, _, _ in sorted(os.walk(folder), key=lambda walked: -len(Path(walked[0]).parts)):
        _rmdir_if_empty(Path(current))


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _check_writable(path: Path, what: str) -> None:
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a directory; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {what} {path} ({existing} is read-only); choose a directory you can write to")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --- checkpoints ----------------------------------------------------------------------


def checkpoint_progress(checkpoint: Path) -> dict | None:
    """What a checkpoint's run was and how far it had come, or None when the checkpoint is not whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        return json.loads((checkpoint / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-N whose save finished (our progress file is written after the Trainer's files)."""
    steps = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and checkpoint_progress(path) is not None:
            steps.append((int(suffix), path))
    return max(steps)[1] if steps else None
