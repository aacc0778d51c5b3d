"""The corpus of bad inputs (tests/bad_inputs/cases.yaml): every case stops, skips or loads exactly as written there."""

import logging
from pathlib import Path

import pytest
import yaml
from helpers.cli import run_cli

from instructemo.data.datasets import load_split
from instructemo.errors import UserError

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())


def case_id(case: dict) -> str:
    return case["file"] + ("+" + ",".join(case["options"]) if case.get("options") else "")


def check_space(split, case: dict) -> None:
    if "labels" in case:
        assert list(split.label_space.names) == case["labels"]
    if "multi_label" in case:
        assert split.label_space.multi_label is case["multi_label"]
    assert all(set(r.labels) <= set(split.label_space.names) for r in split.records)  # no class is invented


@pytest.mark.parametrize("case", CASES["data"], ids=case_id)
def test_data_case(case, tmp_path, caplog):
    path = str(CORPUS / case["file"])
    options = case.get("options", {})
    if case["expect"] == "error":
        with pytest.raises(UserError) as info:
            load_split(path, tmp_path, **options)
        message = str(info.value)
        assert "\n" not in message
        for part in case["message"]:
            assert part in message
        return
    if case["expect"] == "bad_rows":
        with pytest.raises(UserError) as info:
            load_split(path, tmp_path, **options)
        first = f"{case['file']}:{case['lines'][0]}: "
        assert f"{len(case['lines'])} bad row(s)" in str(info.value) and first in str(info.value)
        assert case["reason"] in str(info.value)
        split = load_split(path, tmp_path, on_bad_rows="skip", **options)
        assert [int(row.source.rsplit(":", 1)[1]) for row in split.skipped] == case["lines"]
        check_space(split, case)
        return
    with caplog.at_level(logging.INFO, logger="instructemo"):
        split = load_split(path, tmp_path, **options)
    assert len(split.records) == case["rows"] and not split.skipped
    check_space(split, case)
    if "first_labels" in case:
        assert list(split.records[0].labels) == case["first_labels"]
    if "conflicts" in case:
        assert len(split.conflicts) == case["conflicts"]
    if "logged" in case:
        assert case["logged"] in caplog.text


@pytest.mark.parametrize("case", CASES["config"], ids=case_id)
def test_config_case_stops_before_writing(case, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("sft", CORPUS / case["file"], f"output_dir={out}", f"dataset_dir={tmp_path}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("instructemo: error: ") and "\n" not in err and case["message"] in err
    assert not out.exists()


def test_training_on_a_single_class_is_refused_before_anything_is_written(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset: {CORPUS / 'single_class.csv'}\noutput_dir: {tmp_path / 'run'}\n")
    assert run_cli("sft", config) == 2
    assert "hold one class only (joy): a classifier needs rows of at least two" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_every_corpus_file_has_a_case():
    named = {case["file"] for group in CASES.values() for case in group}
    assert named == {p.name for p in CORPUS.iterdir()} - {"cases.yaml", "requests.yaml"}  # requests: test_serve


def test_a_text_longer_than_the_csv_field_limit_is_read(tmp_path):
    long_text = "so happy " * 20000  # 180 KB, beyond the csv module's default 128 KiB field limit
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long_text}",joy\nsad,sadness\n')
    split = load_split(str(path), tmp_path)
    assert split.records[0].text == long_text and len(split.records) == 2


def test_a_relative_dataset_path_is_found_from_the_current_directory(tmp_path, monkeypatch):
    here, elsewhere = tmp_path / "here", tmp_path / "data"
    here.mkdir()
    elsewhere.mkdir()
    (here / "mine.csv").write_text("text,label\nhappy,joy\nsad,sadness\n")
    monkeypatch.chdir(here)
    assert len(load_split("mine.csv", elsewhere).records) == 2
    (elsewhere / "theirs.csv").write_text("text,label\nhappy,joy\n")
    assert len(load_split("theirs.csv", elsewhere).records) == 1  # then dataset_dir
    with pytest.raises(UserError) as info:
        load_split("nowhere.csv", elsewhere)
    assert str(here / "nowhere.csv") in str(info.value) and str(elsewhere / "nowhere.csv") in str(info.value)
