"""Every inference path puts its model where `device:` says, through the one loader (infer/loading.py).

No GPU here: the tests make torch report two CUDA devices and record where the loader places each model
(`loading.place`), which leaves it on the CPU so the verbs still run end to end.
"""

import importlib.util
import json

import pytest
import torch
from conftest import EMOTION_ROWS, write_emotion_txt
from helpers.cli import run_cli, tiny_config

from instructemo.config.schema import load_config
from instructemo.errors import UserError
from instructemo.infer import loading
from instructemo.models import load as models


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama):
    """A generative run and a classification head, trained before any GPU is pretended."""
    root = tmp_path_factory.mktemp("devices")
    write_emotion_txt(root / "data" / "emotion" / "train.txt")
    write_emotion_txt(root / "data" / "emotion" / "test.txt", EMOTION_ROWS[::2])
    rows = [("i feel happy and scared", ["joy", "fear"]), ("so sad", ["sadness"]), ("ok", [])] * 2
    for split in ("train", "dev"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "labels": l}) + "\n" for t, l in rows))
    multi = {"dataset": str(root / "train.jsonl"), "select_dataset": str(root / "dev.jsonl")}
    made = {}
    for name, stage, extra in (("sft", "sft", {}), ("head", "head", {}), ("multi", "sft", multi)):
        made[name] = tiny_config(
            root / name, tiny_llama, root / "data", stage=stage, max_steps=2, bf16=False, mode="score", **extra
        )
        assert run_cli("sft", made[name]) == 0
    return made


@pytest.fixture()
def two_gpus(monkeypatch):
    """torch sees two CUDA devices; the devices models are placed on, in order."""
    placed = []
    monkeypatch.setattr(loading, "cuda_devices", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(loading, "place", lambda model, device: placed.append(str(device)) or model)
    return placed


@pytest.mark.slow
def test_every_inference_verb_places_its_model_on_the_chosen_gpu(runs, two_gpus, tmp_path, monkeypatch):
    sft, cls = runs["sft"], runs["head"]
    assert run_cli("generate-eval", sft) == 0
    assert run_cli("generate-eval", cls, "device=cuda:1") == 0  # the dense engine
    for config, device in ((sft, "cuda:0"), (cls, "cuda:1")):
        metrics = json.loads((load_config(config, []).resolved_eval_output_dir / "metrics.json").read_text())
        assert metrics["device"] == device
    table = tmp_path / "in.csv"
    table.write_text("text\n" + "".join(f"{t}\n" for t, _ in EMOTION_ROWS))
    for shard in ("1/4", "2/4", "3/4"):  # device: auto; shard i takes GPU i % 2
        assert (
            run_cli("predict", sft, "--input", table, "--output", tmp_path / f"{shard[0]}.csv", "--shard", shard) == 0
        )
    assert run_cli("classify", sft, "--", "i am happy") == 0
    assert run_cli("calibrate", runs["multi"], "device=cuda") == 0
    from instructemo.serve import server as serve
    from instructemo.serve.settings import ServeSettings

    class Started:
        def run(self):
            pass

    monkeypatch.setattr(serve, "_draining_server", lambda config: Started())  # it loads its model, then would listen
    serve.run_serve(load_config(sft, ["device=cuda:1"]), ServeSettings())
    assert two_gpus == ["cuda:0", "cuda:1", "cuda:1", "cuda:0", "cuda:1", "cuda:0", "cuda:0", "cuda:1"]


def test_export_and_device_cpu_keep_the_model_on_the_cpu_of_a_gpu_machine(runs, two_gpus, tmp_path):
    assert run_cli("export", runs["sft"], "--output", tmp_path / "exported") == 0
    assert run_cli("generate-eval", runs["head"], "device=cpu") == 0
    assert two_gpus == ["cpu", "cpu"]


def test_flash_attention_2_is_chosen_only_for_a_model_on_cuda(runs, two_gpus, monkeypatch, caplog):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a)
    )
    assert models.pick_attention("auto", device=torch.device("cuda", 0)) == "flash_attention_2"
    with monkeypatch.context() as gpu_machine:
        gpu_machine.setattr(torch.cuda, "is_available", lambda: True)
        assert models.pick_attention("auto") == "flash_attention_2"  # training on a GPU machine
    assert models.pick_attention("auto", device=torch.device("cpu")) == "sdpa"
    with pytest.raises(UserError, match="fa2 needs the flash-attn package and a model on a CUDA GPU"):
        models.pick_attention("fa2", device=torch.device("cpu"))
    caplog.set_level("INFO")
    caplog.clear()
    assert run_cli("generate-eval", runs["sft"], "device=cpu") == 0  # it loads and runs: no FlashAttention-2 on a CPU
    assert "attention implementation: sdpa" in caplog.text and "flash_attention_2" not in caplog.text


def test_a_device_that_is_not_there_is_one_line(runs, two_gpus, capsys):
    for setting, message in (
        ("cuda:2", "device: cuda:2, but this machine has 2 GPU(s) (cuda:0 to cuda:1)"),
        ("gpu", "device: 'gpu' is not one of auto, cpu, cuda or cuda:N"),
    ):
        assert run_cli("generate-eval", runs["sft"], f"device={setting}") == 2
        assert message in capsys.readouterr().err
    assert two_gpus == []


def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert loading.pick_device("auto", shard=3) == torch.device("cpu")
    with pytest.raises(UserError, match="device: cuda, but torch sees no CUDA GPU on this machine"):
        loading.pick_device("cuda")
