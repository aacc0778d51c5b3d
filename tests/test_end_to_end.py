"""sft then generate-eval through the CLI, on a tiny Llama built in the test."""

import json
import subprocess
import sys

import pytest
from helpers.cli import run_cli, tiny_config

from instructemo.errors import UserError


def test_sft_then_generate_eval(tmp_path, tiny_llama, emotion_dir):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir)
    assert run_cli("sft", config) == 0
    run = tmp_path / "run"
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer_config.json",
        "label_space.json",
        "instructemo_config.yaml",
        "trainer_log.jsonl",
        "loss.png",
        "train_results.json",
    ):
        assert (run / name).is_file(), name
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    losses = [
        json.loads(line)["loss"] for line in (run / "trainer_log.jsonl").read_text().splitlines() if '"loss"' in line
    ]
    assert len(losses) == 15
    assert losses[-1] < losses[0]  # it learns
    assert json.loads((run / "label_space.json").read_text())["names"][1] == "joy"

    assert run_cli("generate-eval", config) == 0
    rows = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # the tiny test split
    assert set(rows[0]) == {"id", "source", "text", "gold", "generation", "predicted"}
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    m = metrics["metrics"]
    assert metrics["adapter"] == str(run) and metrics["decoding"] == "greedy"
    assert {"accuracy", "macro_f1", "micro_f1", "weighted_f1", "per_class", "confusion_matrix", "invalid_rate"} <= set(
        m
    )
    assert m["n"] == 6 and sum(map(sum, m["confusion_matrix"]["counts"])) == 6
    assert m["invalid"] == sum(r["predicted"] is None for r in rows)
    report = (run / "eval" / "report.md").read_text()
    assert "## Per class" in report and "## Confusion matrix" in report
    # The tiny test split repeats training texts: counted. The training split itself: not held out.
    assert metrics["held_out"] is True and metrics["texts_in_training"] == 6
    assert run_cli("generate-eval", config, "eval_dataset=emotion:train", f"eval_output_dir={run / 'on-train'}") == 0
    on_train = json.loads((run / "on-train" / "metrics.json").read_text())
    assert (on_train["held_out"], on_train["also_used_for"]) == (False, ["training"])
    # The live log a watcher reads while training: one line per logged step, the last one at the end.
    live = [json.loads(line) for line in (run / "instructemo_live.jsonl").read_text().splitlines()]
    assert [p["loss"] for p in live] == losses and live[-1]["step"] == live[-1]["max_steps"] == 15

    # The run's folder stands for the config it was trained with.
    from instructemo.config.schema import load_config

    again = load_config(run, ["mode=score"])
    assert (again.output_dir, again.mode, again.cutoff_len, again.overwrite_output_dir) == (
        str(run),
        "score",
        96,
        False,
    )
    with pytest.raises(UserError, match="without instructemo_config.yaml"):
        load_config(tmp_path)


def test_multi_label_full_finetune_and_eval(tmp_path, tiny_llama):
    data = tmp_path / "ml.jsonl"
    rows = [("i feel happy and scared", ["joy", "fear"]), ("so sad", ["sadness"]), ("i am here", [])] * 3
    data.write_text("".join(json.dumps({"text": t, "labels": l}) + "\n" for t, l in rows))
    config = tiny_config(
        tmp_path,
        tiny_llama,
        tmp_path,
        dataset=str(data),
        eval_dataset=str(data),
        finetuning_type="full",
        max_steps=2,
        learning_rate=1e-3,
    )
    assert run_cli("sft", config) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert run_cli("generate-eval", config) == 0
    m = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["metrics"]
    assert {"jaccard", "exact_match", "label_confusion"} <= set(m) and m["n"] == 9


def test_zero_shot_eval_without_an_adapter(tmp_path, tiny_llama, emotion_dir):
    config = tiny_config(
        tmp_path, tiny_llama, emotion_dir, eval_output_dir=str(tmp_path / "run" / "zs"), max_eval_samples=3
    )
    assert run_cli("generate-eval", config) == 0
    metrics = json.loads((tmp_path / "run" / "zs" / "metrics.json").read_text())
    assert metrics["adapter"] is None and metrics["metrics"]["n"] == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("dataset=emotoin", "unknown dataset 'emotoin'"),
        ("dataset=/nowhere/train.csv", "dataset file /nowhere/train.csv not found"),
        ("model_name_or_path=./no-such-model", "model './no-such-model' not found"),
        ("template=nope", "template 'nope' not found"),
        ("eval_dataset=emotion:nope", "has no split 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_llama, emotion_dir, capsys, override, message):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, do_eval=True)
    assert run_cli("sft", config, override) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("instructemo: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "instructemo.cli", "generate-eval", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "max_new_tokens" in result.stdout and "[default: 16]" in result.stdout


def test_full_fine_tuning_keeps_fp32_master_weights(tmp_path, emotion_dir, monkeypatch):
    """In bf16 an update below 1/256 of a weight rounds away; full fine-tuning keeps fp32 weights under bf16 autocast."""
    import torch
    from conftest import build_tiny_causal_lm
    from safetensors.torch import load_file

    from instructemo.models import load as models

    monkeypatch.setattr(models, "bf16_supported", lambda device=None: True)  # without native bf16: emulated, slow
    base = build_tiny_causal_lm(tmp_path / "base")
    config = tiny_config(
        tmp_path, base, emotion_dir, finetuning_type="full", bf16=True, learning_rate=1e-5, max_steps=1
    )
    assert run_cli("sft", config) == 0
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    moved = [name for name in before if not torch.equal(before[name].float(), after[name].float())]
    assert all(t.dtype == torch.float32 for t in after.values())
    # Adam moves every weight with a gradient by about lr = 1e-5, far below bf16's step for weights of 0.02
    assert len(moved) >= 0.8 * len(before), f"only {len(moved)} of {len(before)} tensors changed"


def test_a_row_longer_than_cutoff_len_keeps_its_answer_and_is_counted(tmp_path, tiny_llama, emotion_dir, monkeypatch):
    """A text that re-tokenizes longer than its budget is trained whole (answer and turn end), never cut or dropped."""
    from instructemo.prompts.builder import PromptBuilder

    monkeypatch.setattr(PromptBuilder, "fit", lambda self, text, **_: text + " happy" * 120)  # over cutoff_len=96
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=1)
    assert run_cli("sft", config) == 0
    results = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert results["train_rows"] == 12
