"""The data a run trained on, and the evaluation split paired with it, recorded by absolute path and content.

A run's saved config keeps the dataset paths in full (a relative path read
from another folder would name other rows), and `data_files.json` keeps each
split's file and SHA-256. A verb that reads the run's data again (generate-eval,
calibrate, few-shot examples, the training-overlap check) compares what it found
with that record: the same rows under another path are accepted, other rows
under the same name are refused, naming both files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from instructemo.config.schema import Config
from instructemo.data.datasets import Split, entry_for, is_path_spec, locate_path, run_spec, spec_options
from instructemo.data.readers import find_file
from instructemo.errors import UserError
from instructemo.run.directory import DATA_FILES_FILE
from instructemo.run.fileio import file_digest, json_text, read_json

log = logging.getLogger(__name__)

ROLES = {"train": "trained on", "dev": "selected on", "eval": "is evaluated on"}
DEFAULT_SPLIT = {"train": "train", "dev": "dev", "eval": "test"}


def absolute_paths(cfg: Config) -> dict[str, str]:
    """The config keys that name data, in full: what a run saves, so it reads the same files from any folder."""
    values = {"dataset_dir": str(Path(cfg.dataset_dir).expanduser().resolve())}
    for key in ("dataset", "eval_dataset", "select_dataset"):
        spec = getattr(cfg, key)
        if spec and is_path_spec(spec):
            try:
                values[key] = str(locate_path(spec, cfg.dataset_dir).resolve())
            except (
                UserError
            ):  # not there yet (an eval file made after training): in full from here, as it would be read
                values[key] = str(Path(spec).expanduser().resolve())
    return values


def data_record(cfg: Config, train: Split, select: Split | None) -> str:
    """data_files.json: each split's spec as configured, the file it found, and the file's digest."""
    record = {"train": _entry(cfg.dataset, train.file or train.origin, train.exclusions)}
    if select is not None:
        record["dev"] = _entry(run_spec(cfg, "dev"), select.file or select.origin, select.exclusions)
    try:
        spec = run_spec(cfg, "eval")
        if is_path_spec(spec):
            path = locate_path(spec, cfg.dataset_dir)
        else:
            entry, split = entry_for(spec, cfg.dataset_dir, default_split="test", **spec_options(cfg))
            path = find_file(entry.splits[split]["file"], cfg.dataset_dir)
        exclusions = None
        if not is_path_spec(spec) and entry.exclude_ids is not None:
            exclusions = find_file(entry.exclude_ids, cfg.dataset_dir)
        if path is not None:
            record["eval"] = _entry(spec, str(path.resolve()), exclusions.resolve() if exclusions else None)
    except UserError:  # no evaluation split to pair with: generate-eval will name its own
        pass
    return json_text(record)


def check_split_is_the_runs(run: Path | None, role: str, spec: str, split: Split) -> None:
    """Refuse rows that are not the ones the run in `run` recorded for `role` under this spec, naming both files.

    A spec other than the recorded one is the user's choice of other data, and
    passes: what was read is recorded by whatever reads it.
    """
    path = run / DATA_FILES_FILE if run is not None else None
    recorded = (read_json(path) or {}).get(role) if path is not None and path.is_file() else None
    if not recorded or (spec != recorded["spec"] and not _same_path(spec, recorded["file"])):
        return  # nothing recorded, or other data asked for by name
    found = split.file or split.origin
    _check_exclusions(run, role, recorded.get("exclude_ids"), split.exclusions)
    digest = _digest(found)
    if digest == recorded["sha256"]:
        if found != recorded["file"]:
            log.info("%s data: %s holds the same rows as %s, which the run recorded", role, found, recorded["file"])
        return
    if found == recorded["file"]:
        what = f"it has changed since (now sha256 {digest}); restore it"
    else:
        what = f"{spec!r} now finds {found} instead (sha256 {digest}); run from the folder it was trained in"
    raise UserError(
        f"the run in {run} {ROLES[role]} {recorded['file']} (sha256 {recorded['sha256']}), but {what}, or give the "
        "data you mean under a new file name"
    )


def _entry(spec: str, origin: str, exclusions: Path | None = None) -> dict:
    entry = {"spec": spec, "file": origin, "sha256": _digest(origin)}
    if exclusions is not None:
        entry["exclude_ids"] = {"file": str(exclusions), "sha256": file_digest(exclusions)}
    return entry


def _check_exclusions(run: Path, role: str, recorded: dict | None, found: Path | None) -> None:
    """The rows a run left out are part of its data: the same reviewed list, or none, must apply now."""
    digest = file_digest(found) if found is not None else None
    if (recorded or {}).get("sha256") == digest:
        return
    was = f"left out the rows listed in {recorded['file']}" if recorded else "left out no rows"
    now = f"the registry now lists {found} (sha256 {digest})" if found else "no exclusion list applies now"
    raise UserError(
        f"the run in {run} {ROLES[role]} its data and {was}, but {now}; restore the registry's exclude_ids as "
        "it was, or register the cleaned data under a new name"
    )


def _digest(origin: str) -> str | None:
    """A local file's digest; None for a hub dataset (its id and split name say which rows)."""
    return None if origin.startswith("hub:") else file_digest(Path(origin))


def _same_path(spec: str, recorded: str) -> bool:
    try:
        return is_path_spec(spec) and Path(spec).expanduser().resolve() == Path(recorded)
    except OSError:
        return False
