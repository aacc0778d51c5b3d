"""Nothing lost, nothing trusted blindly: resume after a kill, no mixed runs, determinism, bad rows, safe loading."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EMOTION_ROWS, build_tiny_causal_lm, pickled_copy, write_emotion_txt
from helpers.cli import run_cli, tiny_config

from instructemo.errors import UserError
from instructemo.prompts.builder import load_template

pytestmark = pytest.mark.slow  # processes, servers and real models: make test runs it, make test-fast does not


def losses(run: Path) -> dict[int, float]:
    return {
        r["step"]: r["loss"]
        for r in map(json.loads, (run / "trainer_log.jsonl").read_text().splitlines())
        if "loss" in r
    }


@pytest.fixture(scope="module")
def slow_tiny(tmp_path_factory):
    """A bigger tiny model: its checkpoints carry real optimizer state for the resume to restore."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("slow-tiny"), hidden_size=256, heads=4)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, slow_tiny):
    """A run killed with SIGKILL after its step-8 checkpoint, then resumed; and the same run uninterrupted."""
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    write_emotion_txt(data / "emotion" / "train.txt")
    write_emotion_txt(data / "emotion" / "test.txt", EMOTION_ROWS[::2])
    settings = dict(max_steps=24, save_steps=4, learning_rate=1e-3, logging_steps=1)
    config = tiny_config(root / "killed", slow_tiny, data, **settings)
    harness = Path(__file__).parent / "fault_harness.py"  # killed once checkpoint-8 is whole: a named point, no race
    worker = subprocess.run(
        [sys.executable, str(harness), "sft", config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "INSTRUCTEMO_FAULT": "kill:checkpoint-8"},
        timeout=600,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr[-2000:]
    run = root / "killed" / "run"
    assert not (run / "adapter_model.safetensors").exists()  # the killed run never finished
    progress = json.loads((run / "checkpoint-8" / "instructemo_progress.json").read_text())
    refused = run_cli("sft", config)  # a plain re-run must not mix into the killed run
    resumed = run_cli("sft", config, "resume=auto")
    whole = tiny_config(root / "whole", slow_tiny, data, **settings)
    assert run_cli("sft", whole) == 0
    return {
        "refused": refused,
        "resumed": resumed,
        "config": config,
        "run": run,
        "whole": root / "whole" / "run",
        "progress_at_kill": progress,
    }


def test_resume_after_sigkill_finishes_the_run(killed_and_resumed):
    k = killed_and_resumed
    assert k["refused"] == 2 and k["resumed"] == 0
    assert json.loads((k["run"] / "train_results.json").read_text())["global_steps"] == 24
    assert run_cli("generate-eval", k["config"]) == 0  # the adapter loads and evaluates
    assert json.loads((k["run"] / "eval" / "metrics.json").read_text())["metrics"]["n"] == 6


def test_resumed_run_reaches_the_same_loss_as_an_uninterrupted_one(killed_and_resumed):
    resumed, whole = losses(killed_and_resumed["run"]), losses(killed_and_resumed["whole"])
    assert set(resumed) == set(whole) == set(range(1, 25))
    for step in whole:  # every step, before and after the kill, as the README promises
        assert resumed[step] == pytest.approx(whole[step], rel=1e-3), step
    assert resumed[24] < resumed[1]  # and it learned


def test_a_resumed_run_reports_figures_for_the_whole_run(killed_and_resumed):
    results = json.loads((killed_and_resumed["run"] / "train_results.json").read_text())
    whole = json.loads((killed_and_resumed["whole"] / "train_results.json").read_text())
    assert results["resumed_from_step"] == 8 and whole["resumed_from_step"] is None
    assert results["final_loss"] == losses(killed_and_resumed["run"])[24]
    assert results["mean_loss"] == pytest.approx(whole["mean_loss"], rel=1e-3)
    before = killed_and_resumed["progress_at_kill"]
    assert before["global_step"] == 8
    assert results["train_seconds"] > before["train_seconds"] > 0  # the time before the kill counts
    examples = 24 * 4  # max_steps x batch size
    # both figures are rounded (0.1 s, 0.01 ex/s); the check is against the 40x a resume used to report
    assert results["train_examples_per_second"] * results["train_seconds"] == pytest.approx(examples, rel=0.05)


def test_a_second_run_does_not_mix_into_the_first(tmp_path, tiny_llama, emotion_dir, capsys):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=1)
    assert run_cli("sft", config) == 0
    assert run_cli("sft", config) == 2
    assert "already holds a finished training run; set overwrite_output_dir: true" in capsys.readouterr().err
    first = (tmp_path / "run" / "adapter_model.safetensors").read_bytes()
    assert run_cli("sft", config, "overwrite_output_dir=true", "seed=7") == 0
    assert (tmp_path / "run" / "adapter_model.safetensors").read_bytes() != first  # replaced, not mixed
    stray = tmp_path / "run" / "thresholds.json"  # a file the run did not write would be mixed into the next one
    stray.write_text("{}")
    assert run_cli("sft", config, "overwrite_output_dir=true") == 2
    assert "holds files beside its run that instructemo did not write (thresholds.json)" in capsys.readouterr().err
    assert stray.read_text() == "{}"  # and it is not deleted either


def test_repeated_generate_eval_is_identical(tmp_path, tiny_llama, emotion_dir):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=3)
    assert run_cli("sft", config) == 0
    for mode in ("generate", "score"):
        outputs = []
        for attempt in ("a", "b"):
            out = tmp_path / "run" / f"{mode}-{attempt}"
            assert run_cli("generate-eval", config, f"mode={mode}", f"eval_output_dir={out}") == 0
            metrics = json.loads((out / "metrics.json").read_text())
            outputs.append(((out / "predictions.jsonl").read_text(), metrics["metrics"]))
        assert outputs[0] == outputs[1]


def test_skip_policy_trains_on_good_rows_and_lists_the_rest(tmp_path, tiny_llama):
    data = tmp_path / "data"
    write_emotion_txt(data / "emotion" / "train.txt", EMOTION_ROWS + [("  ", "joy"), ("so bored", "boredom")])
    write_emotion_txt(data / "emotion" / "test.txt", EMOTION_ROWS[:4])
    config = tiny_config(tmp_path, tiny_llama, data, max_steps=1)
    assert run_cli("sft", config) == 2
    assert run_cli("sft", config, "on_bad_rows=skip") == 0
    skipped = [json.loads(line) for line in (tmp_path / "run" / "skipped_rows.jsonl").read_text().splitlines()]
    assert [s["reason"].split(" ")[0] for s in skipped] == ["empty", "label(s)"]
    assert all(s["source"].endswith((":14", ":15")) for s in skipped)


def test_code_shipped_with_a_model_needs_trust_remote_code(tmp_path, tiny_llama, emotion_dir, capsys):
    custom = tmp_path / "custom"
    custom.mkdir()
    for name in os.listdir(tiny_llama):
        (custom / name).write_bytes((tiny_llama / name).read_bytes())
    config_json = json.loads((custom / "config.json").read_text())
    config_json.update(
        model_type="my_custom_llm",
        auto_map={"AutoConfig": "modeling_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomLM"},
    )
    (custom / "config.json").write_text(json.dumps(config_json))
    (custom / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    config = tiny_config(tmp_path, custom, emotion_dir, max_steps=1)
    assert run_cli("sft", config) == 2
    assert "trust_remote_code" in capsys.readouterr().err


def test_pickled_weights_are_refused_unless_allowed(tmp_path, tiny_llama, emotion_dir, capsys):
    pickled = pickled_copy(tiny_llama, tmp_path / "pickled")
    config = tiny_config(tmp_path, pickled, emotion_dir, max_steps=1)
    assert run_cli("sft", config) == 2
    assert "only pickled weights" in capsys.readouterr().err
    assert run_cli("sft", config, "allow_pickle_weights=true") == 0


def test_config_paths_cannot_write_outside_output_dir(tmp_path, tiny_llama, emotion_dir, capsys):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir)
    assert run_cli("generate-eval", config, f"eval_output_dir={tmp_path / 'run' / '..' / 'elsewhere'}") == 2
    assert "is outside output_dir" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()
    assert (
        run_cli("generate-eval", config, f"eval_output_dir={tmp_path / 'run'}") == 2
    )  # its files would mix with the run's
    assert "is output_dir itself" in capsys.readouterr().err


def test_user_templates_render_in_the_sandbox(tmp_path):
    evil = tmp_path / "evil.jinja"
    evil.write_text("{{ text.__class__.__mro__[1].__subclasses__() }}")
    template = load_template(str(evil), "single_label")
    from instructemo.data.labels import LabelSpace
    from instructemo.prompts.builder import render_user_turn

    with pytest.raises(UserError):
        render_user_turn(template, "hi", LabelSpace(("a",)))
