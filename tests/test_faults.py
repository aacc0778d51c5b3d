"""Faults during `instructemo sft`: kill -9 at random moments and inside the final save, and a full disk.

After each one, a reading verb either works on a complete run or refuses the
directory in one line; and resume: auto then finishes the run.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EMOTION_ROWS, build_tiny_causal_lm, write_emotion_txt
from helpers.cli import run_cli, tiny_config

from instructemo.run.directory import RunDir

pytestmark = pytest.mark.slow  # processes, servers and real models: make test runs it, make test-fast does not

HARNESS = Path(__file__).parent / "fault_harness.py"
SETTINGS = dict(max_steps=12, save_steps=4, learning_rate=1e-3, logging_steps=1, max_eval_samples=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model whose files are big enough to tell a full disk's cut from a whole file, data, and one uninterrupted
    reference run (its file sizes)."""
    root = tmp_path_factory.mktemp("faults")
    model = build_tiny_causal_lm(root / "model", hidden_size=256, heads=4)
    data = root / "data"
    write_emotion_txt(data / "emotion" / "train.txt")
    write_emotion_txt(data / "emotion" / "test.txt", EMOTION_ROWS[::2])
    reference = tiny_config(root / "reference", model, data, **SETTINGS)
    assert run_cli("sft", reference) == 0
    run = root / "reference" / "run"
    sizes = {
        "adapter": (run / "adapter_model.safetensors").stat().st_size,
        "optimizer": max(p.stat().st_size for p in run.glob("checkpoint-*/optimizer.pt")),
    }
    return {"root": root, "model": model, "data": data, "sizes": sizes}


def config_for(setup, name: str, **extra) -> tuple[str, Path]:
    return tiny_config(setup["root"] / name, setup["model"], setup["data"], **{**SETTINGS, **extra}), setup[
        "root"
    ] / name / "run"


def start(config: str, fault: str | None = None) -> subprocess.Popen:
    command = [sys.executable, str(HARNESS) if fault else "-m", *([] if fault else ["instructemo.cli"]), "sft", config]
    env = {**os.environ, **({"INSTRUCTEMO_FAULT": fault} if fault else {})}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def read_back(config: str, run: Path, capsys) -> str:
    """What a reading verb makes of the directory: 'complete' (it evaluated the run) or 'refused' (one line)."""
    capsys.readouterr()
    code = run_cli("generate-eval", config)
    err = capsys.readouterr().err.strip().splitlines()
    if code == 0:
        assert RunDir(run).is_complete()
        assert json.loads((run / "eval" / "metrics.json").read_text())["adapter"] == str(run)
        return "complete"
    assert code == 2 and err[-1].startswith("instructemo: error: ") and "holds an incomplete training run" in err[-1]
    assert not (run / "eval").exists()
    return "refused"


def resume_and_read(config: str, run: Path, capsys) -> None:
    """resume: auto finishes an interrupted run, which then evaluates."""
    if not RunDir(run).is_complete():
        assert run_cli("sft", config, "resume=auto") == 0
    assert read_back(config, run, capsys) == "complete"
    assert json.loads((run / "train_results.json").read_text())["global_steps"] == SETTINGS["max_steps"]


# Kill moments are named points of the fault harness, not sleeps: before the first checkpoint, between two, and
# inside the Trainer's save of one (the weights written, the optimizer not).
@pytest.mark.parametrize("point", ["step-2", "step-6", "half-checkpoint-8"])
def test_kill_during_training(setup, capsys, point):
    config, run = config_for(setup, f"kill-{point}")
    worker = start(config, f"kill:{point}")
    assert worker.wait(timeout=300) == -signal.SIGKILL, worker.stderr.read()[-2000:]
    assert read_back(config, run, capsys) == "refused"
    resume_and_read(config, run, capsys)


# Before any move, during the moves, after them: "staged" and "move-4" take the paths of their neighbours.
@pytest.mark.parametrize("point", ["mid-staging", "move-1", "before-complete"])
def test_kill_inside_the_final_save(setup, capsys, point):
    config, run = config_for(setup, f"kill-{point}")
    worker = start(config, f"kill:{point}")
    worker.communicate(timeout=300)
    assert worker.returncode == -signal.SIGKILL
    assert read_back(config, run, capsys) == "refused"
    resume_and_read(config, run, capsys)


@pytest.mark.parametrize("where", ["checkpoint", "final save"])
def test_a_full_disk_stops_in_one_line_and_leaves_the_run_incomplete(setup, capsys, where):
    sizes = setup["sizes"]
    if where == "checkpoint":
        config, run = config_for(setup, "full-checkpoint")
        limit = sizes["optimizer"] - 1
    else:
        config, run = config_for(setup, "full-final", save_steps=None)
        limit = sizes["adapter"] - 1
    worker = start(config, f"fsize:{limit}")
    _, err = worker.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.startswith("instructemo: error: ")]
    assert worker.returncode == 2 and len(lines) == 1 and "Traceback" not in err
    assert ("could not write a checkpoint" if where == "checkpoint" else "saving the trained run") in lines[0]
    assert read_back(config, run, capsys) == "refused"
    resume_and_read(config, run, capsys)
