"""The everyday verbs: datasets, classify, export."""

import io
import json
import shutil
import subprocess

import pytest
from helpers.cli import run_cli, tiny_config
from transformers import AutoModelForCausalLM

from instructemo.verbs.tools import list_datasets


def test_datasets_lists_splits_sizes_labels_and_sources(emotion_dir, capsys):
    listing = {d["name"]: d for d in list_datasets(str(emotion_dir))}
    emotion = listing["emotion"]
    assert emotion["labels"][:2] == ["sadness", "joy"] and not emotion["multi_label"]
    assert emotion["splits"]["train"] == {"rows": 12, "from": str(emotion_dir / "emotion" / "train.txt")}
    assert listing["semeval2018_ec"]["multi_label"] and len(listing["goemotions"]["labels"]) == 28
    assert run_cli("datasets", "--dataset-dir", emotion_dir) == 0
    out = capsys.readouterr().out
    assert "emotion  (single-label, 6 labels, semicolon)" in out and "12 rows" in out


def test_classify_arguments_and_stdin(tmp_path, tiny_llama, emotion_dir, capsys, monkeypatch):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=3)
    assert run_cli("sft", config) == 0
    capsys.readouterr()
    assert (
        run_cli("classify", config, "--text", "i feel so happy", "max_new_tokens=4", "--", "seed=7", "i am scared") == 0
    )
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 3 and lines[0].endswith("i feel so happy") and "[top: " in lines[0]
    assert lines[1].endswith("\tseed=7")  # a text shaped like an override is still a text after --
    label = lines[0].split(" ")[0]
    assert label in {"sadness", "joy", "love", "anger", "fear", "surprise"}
    assert run_cli("classify", config, "i feel so happy") == 2  # a bare word: a text or a typo? it must say
    assert "texts to classify go after --" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("wow\n\n  \ni adore you\n"))
    assert run_cli("classify", config) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) == 4 and lines[1].startswith("(empty text") and lines[3].endswith("i adore you")  # 1:1 with stdin
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert run_cli("classify", config) == 2
    # Text that is not text is refused at the door, in one line (it was a traceback from the tokenizer).
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"fine\nbad \xff byte\n")))
    assert run_cli("classify", config) == 2
    assert "line 2 of standard input is not UTF-8 (byte 0xff)" in capsys.readouterr().err
    assert run_cli("classify", config, "--", "ok", "bad \udcff") == 2  # how Python hands over a non-UTF-8 argument
    assert "text 2 holds '\\udcff' at character 4, half of a surrogate pair" in capsys.readouterr().err
    table = tmp_path / "in.jsonl"
    table.write_text('{"text": "i am happy"}\n{"text": "bad \\ud800"}\n')
    assert run_cli("predict", config, "--input", table, "--output", tmp_path / "out.csv") == 2
    assert "in.jsonl:2: 'text' holds '\\ud800'" in capsys.readouterr().err
    assert not any(p.name.startswith("out.") for p in tmp_path.iterdir())  # nothing written, not even a .partial


def test_export_writes_a_standalone_model(tmp_path, tiny_llama, emotion_dir, capsys):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=3)
    assert run_cli("sft", config) == 0
    out = tmp_path / "exported"
    assert run_cli("export", config, "--output", out) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(out)  # plain transformers loads it
    # The exported model evaluates like the adapter it came from.
    assert run_cli("generate-eval", config, "eval_output_dir=" + str(tmp_path / "run" / "adapter-eval")) == 0
    assert (
        run_cli(
            "generate-eval",
            config,
            f"adapter_name_or_path={out}",
            "eval_output_dir=" + str(tmp_path / "run" / "export-eval"),
        )
        == 0
    )
    a = [
        json.loads(l)["predicted"]
        for l in (tmp_path / "run" / "adapter-eval" / "predictions.jsonl").read_text().splitlines()
    ]
    b = [
        json.loads(l)["predicted"]
        for l in (tmp_path / "run" / "export-eval" / "predictions.jsonl").read_text().splitlines()
    ]
    assert a == b
    assert run_cli("export", config, "--output", out) == 2  # never into a non-empty directory
    assert run_cli("export", config, "--output", tmp_path / "g", "--gguf") == 2
    assert "convert_hf_to_gguf.py" in capsys.readouterr().err


def test_report_to_tensorboard_writes_the_loss(tmp_path, tiny_llama, emotion_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=3, report_to="tensorboard")
    assert run_cli("sft", config) == 0
    runs = list((tmp_path / "run" / "runs").glob("*"))
    assert len(runs) == 1
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 3


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_html_report_opens_in_a_headless_browser(tmp_path, tiny_llama, emotion_dir):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=3, mode="score")
    assert run_cli("sft", config) == 0
    assert run_cli("generate-eval", config) == 0
    report = tmp_path / "run" / "eval" / "report.html"
    page = report.read_text()
    assert "http://" not in page and "https://" not in page  # self-contained: readable offline
    browser = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert browser.returncode == 0
    dom = browser.stdout
    # confusion matrix, per-class bars, label distribution, calibration, loss curve: all decoded and shown
    assert 'data-figures="5"' in dom and 'data-figures-shown="5"' in dom
    assert "Uncaught" not in browser.stderr and "Most confident mistakes" in dom
