"""GPU-scale recipes, checked here: every seed architecture, PEFT methods, DeepSpeed configs, torchrun."""

import json
import os
from pathlib import Path

import pytest
from conftest import BOTH_DTYPES, build_tiny_causal_lm
from helpers.cli import run_cli, tiny_config

from instructemo.config.schema import load_config
from instructemo.train.launch import torchrun_command
from instructemo.tune.space import tune_settings

pytestmark = pytest.mark.slow  # processes, servers and real models: make test runs it, make test-fast does not

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "gemma3_text"])
def test_every_seed_architecture_trains_and_evaluates(tmp_path, emotion_dir, model_type):
    model = build_tiny_causal_lm(tmp_path / model_type, model_type)
    assert json.loads((model / "config.json").read_text())["model_type"] == model_type
    config = tiny_config(tmp_path, model, emotion_dir, max_steps=2)
    assert run_cli("sft", config) == 0
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()
    assert run_cli("generate-eval", config) == 0
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["metrics"]["n"] == 6


def test_ia3_trains_and_evaluates(tmp_path, tiny_llama, emotion_dir):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, finetuning_type="ia3", max_steps=2, learning_rate=3e-3)
    assert run_cli("sft", config) == 0
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "IA3" and set(adapter["target_modules"]) == {"k_proj", "v_proj", "down_proj"}
    for mode in ("generate", "score"):
        assert run_cli("generate-eval", config, f"mode={mode}") == 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without a GPU")
def test_qlora_without_a_gpu_says_so_in_one_line(tmp_path, tiny_llama, emotion_dir, capsys):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, finetuning_type="qlora")
    assert run_cli("sft", config) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "qlora needs a CUDA GPU" in err and "use finetuning_type: lora" in err
    assert not (tmp_path / "run").exists()


def test_every_example_config_is_valid():
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 9
    for path in examples:
        cfg = load_config(str(path), [])
        if cfg.deepspeed:
            assert (ROOT / cfg.deepspeed).is_file(), path
        if cfg.tune:
            assert tune_settings(cfg).space, path  # the search space is valid too
    assert load_config(str(ROOT / "examples/llama3.yaml"), []).flash_attn == "fa2"
    assert load_config(str(ROOT / "examples/mistral_qlora.yaml"), []).finetuning_type == "qlora"


@pytest.mark.parametrize(
    "name, stage, offload",
    [("ds_z2", 2, False), ("ds_z3", 3, False), ("ds_z2_offload", 2, True), ("ds_z3_offload", 3, True)],
)
def test_deepspeed_configs(name, stage, offload):
    ds = json.loads((ROOT / "examples" / "deepspeed" / f"{name}.json").read_text())
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage and ("offload_optimizer" in zero) == offload
    # The Trainer fills these from the YAML, so the two cannot disagree.
    assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # the saved adapter is whole


@pytest.mark.parametrize("content, message", [(None, "not found"), ("{oops", "not valid JSON")])
def test_bad_deepspeed_config(tmp_path, tiny_llama, emotion_dir, capsys, content, message):
    path = tmp_path / "ds.json"
    if content is not None:
        path.write_text(content)
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, deepspeed=str(path))
    assert run_cli("sft", config) == 2
    assert message in capsys.readouterr().err


def test_select_best_under_zero3_is_refused_before_training(tmp_path, tiny_llama, emotion_dir, capsys):
    """Under ZeRO-3 each process holds a shard: the kept "best weights" were empty shards, restored as the model."""
    ds = str(ROOT / "examples" / "deepspeed" / "ds_z3.json")
    config = tiny_config(
        tmp_path, tiny_llama, emotion_dir, deepspeed=ds, select_best=True, select_dataset="emotion:test"
    )
    assert run_cli("sft", config) == 2
    err = capsys.readouterr().err
    assert "select_best keeps a copy of the best weights, and under ZeRO-3" in err and "ds_z2.json" in err
    assert not (tmp_path / "run").exists()


def test_torchrun_command_reads_the_standard_variables(monkeypatch):
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.5")
    monkeypatch.setenv("MASTER_PORT", "29600")
    command = torchrun_command(4, "c.yaml", ["lora_rank=8"])
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert {
        "--nproc_per_node=4",
        "--nnodes=2",
        "--node_rank=1",
        "--master_addr=10.0.0.5",
        "--master_port=29600",
    } <= set(command)
    assert command[-6:] == ["instructemo.cli", "sft", "c.yaml", "lora_rank=8", "nproc_per_node=4", "do_eval=false"]


def test_two_process_training_on_cpu(tmp_path, tiny_llama, emotion_dir):
    """torchrun + gloo on this CPU: the adapter two processes train loads and evaluates."""
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=3, do_eval=True)
    assert run_cli("sft", config, "--nproc", 2) == 0
    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "trainer_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3
    assert json.loads((run / "train_results.json").read_text())["processes"] == 2
    assert json.loads((run / "eval" / "metrics.json").read_text())["metrics"]["n"] == 6


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is None, reason="deepspeed not installed")
@BOTH_DTYPES
def test_deepspeed_zero2_on_cpu(tmp_path, tiny_llama, emotion_dir, bf16, capfd):
    """DeepSpeed's CPU accelerator (gloo) runs ZeRO-2 in two processes; the adapter evaluates, and both workers
    leave the process group and exit cleanly (left to interpreter exit, one aborted on a bf16 host)."""
    config = tiny_config(
        tmp_path,
        tiny_llama,
        emotion_dir,
        max_steps=2,
        do_eval=True,
        bf16=bf16,
        deepspeed=str(ROOT / "examples" / "deepspeed" / "ds_z2.json"),
    )
    assert run_cli("sft", config, "--nproc", 2) == 0
    run = tmp_path / "run"
    assert json.loads((run / "train_results.json").read_text())["processes"] == 2
    assert json.loads((run / "eval" / "metrics.json").read_text())["metrics"]["n"] == 6
    output = capfd.readouterr()
    assert "terminate called" not in output.err and "crashed while shutting down" not in output.err


def _workers_abort(tmp_path, monkeypatch, when: str) -> None:
    """Every torchrun worker of this test aborts (SIGABRT, as a C++ std::terminate does) at `when`:
    "exit" (after the run is saved) or "save" (as the final save begins)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if 'LOCAL_RANK' in os.environ:\n"
        + (
            "    import atexit\n    atexit.register(os.abort)\n"
            if when == "exit"
            else "    import instructemo.train.trainer as t\n    t.save_run = lambda *a, **k: os.abort()\n"
        )
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))


def test_a_worker_crash_after_the_final_save_is_not_a_failed_run(
    tmp_path, tiny_llama, emotion_dir, monkeypatch, caplog
):
    _workers_abort(tmp_path, monkeypatch, "exit")
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=1, do_eval=True)
    assert run_cli("sft", config, "--nproc", 2) == 0
    assert "crashed while shutting down, not while training" in caplog.text
    run = tmp_path / "run"
    assert json.loads((run / "instructemo_run.json").read_text())["state"] == "complete"
    assert json.loads((run / "eval" / "metrics.json").read_text())["metrics"]["n"] == 6


def test_a_worker_crash_before_the_final_save_fails_the_run(tmp_path, tiny_llama, emotion_dir, monkeypatch, capsys):
    _workers_abort(tmp_path, monkeypatch, "save")
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=1, do_eval=True)
    assert run_cli("sft", config, "--nproc", 2) == 2
    assert "distributed training failed (torchrun exit status 1)" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "instructemo_run.json").read_text())["state"] == "incomplete"
    assert not (tmp_path / "run" / "eval").exists()


def test_deepspeed_in_one_process_still_runs_under_torchrun(tmp_path, tiny_llama, emotion_dir, monkeypatch):
    """DeepSpeed alone would look for MPI (mpi4py) to set up its process group: one process is launched by
    torchrun too. (Its run is the two-process test's path with --nproc_per_node=1.)"""
    from instructemo.train import launch as launch

    launched = []
    monkeypatch.setattr(launch, "relaunch", lambda *args: launched.append(args))
    config = tiny_config(
        tmp_path, tiny_llama, emotion_dir, deepspeed=str(ROOT / "examples" / "deepspeed" / "ds_z2.json")
    )
    assert run_cli("sft", config, "lora_rank=8") == 0
    assert launched == [(1, config, ["lora_rank=8"], str(tmp_path / "run"))]
