"""`instructemo tune`: an Optuna study over config keys, scored on dev, pruned on select_best's evaluations."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import run_cli, tiny_config
from helpers.selection import SELECT

from instructemo.config.schema import load_config
from instructemo.data import datasets as data_module

pytestmark = pytest.mark.slow  # processes, servers and real models: make test runs it, make test-fast does not

# select_best's settings: six optimizer steps, dev scored every two, so a trial reports steps 2, 4 and 6
# (tune turns select_best on for every trial anyway).
TRIAL = SELECT


def study(path: Path):
    import optuna

    return optuna.load_study(study_name="instructemo", storage=f"sqlite:///{path / 'study.db'}")


def table(path: Path) -> list[dict]:
    with open(path / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_tune_prunes_below_the_median_and_never_reads_the_test_split(
    tmp_path, tiny_llama, emotion_dir, monkeypatch, capsys
):
    import optuna

    read = []
    real_read_rows = data_module.read_rows
    monkeypatch.setattr(data_module, "read_rows", lambda *a, **k: read.append(str(a[2])) or real_read_rows(*a, **k))
    space = {"space": {"learning_rate": [5e-2, 2e-2]}, "enqueue": [{"learning_rate": 5e-2}], "startup_trials": 1}
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, tune=space, **TRIAL)
    out = tmp_path / "run"

    assert run_cli("tune", config, "--trials", "1") == 0
    rows = table(out)
    assert [(r["trial"], r["state"], r["learning_rate"]) for r in rows] == [("0", "complete", "0.05")]
    selection = json.loads((out / "trials" / "trial-000" / "selection.json").read_text())
    assert float(rows[0]["dev_macro_f1"]) == pytest.approx(selection["best"]["macro_f1"], abs=1e-4)
    best = load_config(out / "best.yaml")  # runnable: the trial's config, into output_dir/best
    assert best.learning_rate == 0.05 and best.select_best and best.output_dir == str(out / "best")
    assert best.tune is None and not best.do_eval
    assert (out / "optimization_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.html").read_text()
    assert "Optimisation history" in report and "data:image/png;base64," in report
    assert json.loads((out / "instructemo_run.json").read_text())["state"] == "complete"
    # the study goes on only with its own settings: another search space or recipe is refused, with the change
    capsys.readouterr()
    changed = "tune={space: {learning_rate: [0.05, 0.01]}, enqueue: [{learning_rate: 0.05}], startup_trials: 1}"
    assert run_cli("tune", config, changed, "--trials", "2") == 2
    assert (
        "was run with other settings (tune.space.learning_rate [0.05, 0.02] -> [0.05, 0.01]" in capsys.readouterr().err
    )
    assert run_cli("tune", config, "lora_rank=8", "--trials", "2") == 2
    assert "lora_rank 4 -> 8" in capsys.readouterr().err
    assert len(table(out)) == 1  # nothing ran

    # An earlier trial that scored 0.95 at every step: the next trial, the same as trial 0, falls below the median
    # of (trial 0, 0.95) at its first evaluation, and its training stops there.
    s = study(out)
    distributions = s.trials[0].distributions
    s.add_trial(
        optuna.trial.create_trial(
            params={"learning_rate": 2e-2},
            distributions=distributions,
            value=0.95,
            intermediate_values={2: 0.95, 4: 0.95, 6: 0.95},
        )
    )
    s.enqueue_trial({"learning_rate": 5e-2})
    assert run_cli("tune", config, "--trials", "3") == 0
    rows = table(out)
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned"]
    assert rows[2]["note"] == "pruned at step 2" and rows[2]["dev_macro_f1"] == ""
    pruned = out / "trials" / "trial-002"
    assert json.loads((pruned / "train_results.json").read_text())["global_steps"] == 2  # of 6
    assert json.loads((pruned / "selection.json").read_text())["stopped_early_at"] == 2
    assert study(out).trials[2].intermediate_values.keys() == {2}
    assert load_config(out / "best.yaml").learning_rate == 0.02  # the 0.95 trial
    assert (out / "param_importances.png").is_file()  # two finished trials that differ

    assert read and not any(path.endswith("test.txt") for path in read)  # train and dev only


def test_a_killed_tune_resumes_its_interrupted_trial(tmp_path, tiny_llama, emotion_dir):
    space = {"space": {"lora_rank": [4, 8]}, "enqueue": [{"lora_rank": 4}, {"lora_rank": 8}], "pruner": "none"}
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, tune=space, **TRIAL)
    out = tmp_path / "run"
    harness = Path(__file__).parent / "fault_harness.py"
    killed = subprocess.run(  # killed once trial 1 has written checkpoint-2 (trial 0 wrote the first)
        [sys.executable, str(harness), "tune", config, "--trials", "2"],
        capture_output=True,
        env={**os.environ, "INSTRUCTEMO_FAULT": "kill:checkpoint-2#2"},
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    first = json.loads((out / "trials" / "trial-000" / "instructemo_run.json").read_text())

    assert run_cli("tune", config, "--trials", "2") == 0
    rows = table(out)
    assert [(r["trial"], r["state"], r["lora_rank"]) for r in rows] == [
        ("0", "complete", "4"),
        ("1", "interrupted", "8"),
        ("2", "complete", "8"),
    ]
    assert rows[1]["note"] == "tried again as trial 2" and rows[2]["note"] == "resumes trial 1"
    # trial 0 was not trained again; trial 2 continued trial 1's run from its checkpoint
    assert json.loads((out / "trials" / "trial-000" / "instructemo_run.json").read_text()) == first
    resumed = json.loads((out / "trials" / "trial-001" / "train_results.json").read_text())
    assert resumed["resumed_from_step"] == 2 and resumed["global_steps"] == 6
    assert not (out / "trials" / "trial-002").exists()
    history = json.loads((out / "trials" / "trial-001" / "selection.json").read_text())["history"]
    assert [p["step"] for p in history] == [2, 4, 6]
    assert study(out).trials[2].intermediate_values.keys() == {2, 4, 6}
    assert run_cli("tune", config, "--trials", "2") == 0  # already done: nothing trains
    assert len(table(out)) == 3


def test_a_classification_head_trial_keeps_its_best_checkpoint_is_scored_on_dev_and_can_be_pruned(
    tmp_path, tiny_llama, emotion_dir
):
    import optuna

    space = {"space": {"stage": ["head"], "learning_rate": [5e-2, 2e-2]}, "startup_trials": 1}
    space["enqueue"] = [{"stage": "head", "learning_rate": 5e-2}]
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, tune=space, **TRIAL)
    out = tmp_path / "run"
    assert run_cli("tune", config, "--trials", "1") == 0
    trial = out / "trials" / "trial-000"
    dev = json.loads((trial / "dev_eval" / "metrics.json").read_text())
    assert dev["eval_dataset"] == "emotion:validation" and dev["mode"] == "head"
    assert float(table(out)[0]["dev_macro_f1"]) == pytest.approx(dev["metrics"]["macro_f1"], abs=1e-4)
    selection = json.loads((trial / "selection.json").read_text())
    assert [p["step"] for p in selection["history"]] == [2, 4, 6]  # the head's dev scores, as intermediate values
    assert study(out).trials[0].intermediate_values == {p["step"]: p["macro_f1"] for p in selection["history"]}
    # Single-label: the kept checkpoint's dev score is the one generate-eval gives the saved run on those rows.
    assert dev["metrics"]["macro_f1"] == pytest.approx(selection["best"]["macro_f1"])
    assert load_config(out / "best.yaml").stage == "head"

    s = study(out)  # an earlier trial at 0.95 throughout: the next one falls below the median at step 2
    s.add_trial(
        optuna.trial.create_trial(
            params={"stage": "head", "learning_rate": 2e-2},
            distributions=s.trials[0].distributions,
            value=0.95,
            intermediate_values={2: 0.95, 4: 0.95, 6: 0.95},
        )
    )
    s.enqueue_trial({"stage": "head", "learning_rate": 5e-2})
    assert run_cli("tune", config, "--trials", "3") == 0
    rows = table(out)
    assert [r["state"] for r in rows] == ["complete", "complete", "pruned"] and rows[2]["note"] == "pruned at step 2"
    pruned = out / "trials" / "trial-002"
    assert json.loads((pruned / "train_results.json").read_text())["global_steps"] == 2  # of 6
    assert not (pruned / "dev_eval").exists()  # a pruned trial is not judged again


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"select_dataset": "emotion:test"},
            "tune would score its trials on emotion:test, which is the test split",
        ),
        ({"tune": {"space": {"seed": [1, 2]}}}, "tune.space may not search 'seed'"),
        ({"tune": {"space": {"learning_rte": [1e-3]}}}, "tune.space names 'learning_rte', which is not a config key"),
        ({"tune": {"space": {"lora_rank": [0, 8]}}}, "tune.space.lora_rank: config key 'lora_rank' must be at least 1"),
        ({"tune": {"space": {"learning_rate": {"low": 1e-3, "high": 1e-4}}}}, "low 0.001 must be below high 0.0001"),
        ({"tune": {"space": {"warmup_steps": {"low": 0, "high": 10, "log": True}}}}, "a log range needs low above 0"),
        ({"tune": {"space": {"lora_rank": [4]}, "enqueue": [{"lora_rank": 8}]}}, "lora_rank=8 is outside"),
        ({"tune": {"space": {}}}, "tune.space must map config keys"),
        ({"tune": {"space": {"class_weights": ["none", {"joy": 2}]}}}, "a choice must be a number, a word"),
        ({"tune": None}, "the config has no tune: section"),
        ({"tune": {"space": {"lora_rank": [4]}}, "nproc_per_node": 2}, "set nproc_per_node: 1"),
    ],
)
def test_tune_refuses_a_bad_search_before_writing(tmp_path, tiny_llama, emotion_dir, capsys, extra, message):
    values = {"tune": {"space": {"lora_rank": [4, 8]}}, **extra}
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, **values)
    assert run_cli("tune", config) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"select_best": True, "select_dataset": "emotion:train"},
            "select_dataset emotion:train is the training split",
        ),
        ({"do_eval": True, "eval_dataset": "emotion:train"}, "eval_dataset emotion:train is the training split"),
    ],
)
def test_sft_refuses_to_judge_on_its_training_split(tmp_path, tiny_llama, emotion_dir, capsys, extra, message):
    assert run_cli("sft", tiny_config(tmp_path, tiny_llama, emotion_dir, **extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_split_is_known_by_its_rows_not_by_how_it_is_named(tmp_path, emotion_dir):
    """`emotion:test` and the test file's path are one split; two splits that filter one file are two."""
    from instructemo.data.splits import split_location

    named = split_location("emotion:test", emotion_dir, "test")
    assert named == split_location(str(emotion_dir / "emotion" / "test.txt"), emotion_dir, "test")
    assert named != split_location("emotion", emotion_dir, "train")
    (tmp_path / "reviews.csv").write_text("text,label,is_valid\ngood film,positive,False\nbad film,negative,True\n")
    (tmp_path / "datasets.yaml").write_text(
        "reviews:\n  format: csv\n  text_column: text\n  label_column: label\n"
        "  splits:\n    train: {file: reviews.csv, where: {is_valid: 'False'}}\n"
        "    test: {file: reviews.csv, where: {is_valid: 'True'}}\n"
        "  labels: {names: [negative, positive]}\n  template: sentiment\n"
    )
    assert split_location("reviews:train", tmp_path, "train") != split_location("reviews:test", tmp_path, "test")


def test_a_trial_that_fails_is_marked_failed_with_its_reason_and_the_search_goes_on(
    tmp_path, tiny_llama, emotion_dir, monkeypatch, capsys
):
    """Only divergence and out-of-memory were caught: any other failure aborted the study and left the trial
    RUNNING, so every rerun queued the same values first."""
    from instructemo.tune import study as tune

    space = {"space": {"lora_rank": [4, 8]}, "enqueue": [{"lora_rank": 4}, {"lora_rank": 8}], "pruner": "none"}
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, tune=space, **TRIAL)
    real = tune._train_and_score

    def failing_first(trial_cfg, on_selection):
        if trial_cfg.lora_rank == 4:
            raise ValueError("tokenizer exploded\nsecond line of a long message")
        return real(trial_cfg, on_selection)

    monkeypatch.setattr(tune, "_train_and_score", failing_first)
    assert run_cli("tune", config, "--trials", "2") == 0
    rows = table(tmp_path / "run")
    assert [(r["state"], r["lora_rank"]) for r in rows] == [("fail", "4"), ("complete", "8")]
    assert rows[0]["note"] == "ValueError: tokenizer exploded"
    assert {t.state.name for t in study(tmp_path / "run").trials} == {"FAIL", "COMPLETE"}  # none left RUNNING

    monkeypatch.setattr(tune, "_train_and_score", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    assert run_cli("tune", config, "--trials", "6") == 2  # one cause, three times: the search stops and says why
    err = capsys.readouterr().err
    assert "3 trials in a row failed the same way (OSError: disk full); fix that" in err
    assert [r["state"] for r in table(tmp_path / "run")] == ["fail", "complete", "fail", "fail", "fail"]
