"""A finished run stands alone: copied to another folder with its training data gone, every verb that reads it
works and gives the answers it gave in place."""

import json
import shutil

import pytest
from conftest import EMOTION_ROWS, MULTI_LABEL_ROWS
from fastapi.testclient import TestClient
from helpers.cli import run_cli, tiny_config

from instructemo.config.schema import load_config
from instructemo.infer.classifier import Classifier
from instructemo.serve.app import create_app
from instructemo.serve.settings import ServeSettings

pytestmark = pytest.mark.slow  # processes, servers and real models: make test runs it, make test-fast does not

TEXTS = ["i feel so happy and cheerful today", "i am scared of the dark house", "what a wonderful day"]


def write_data(folder, multi_label: bool) -> None:
    folder.mkdir(parents=True)
    if multi_label:
        lines = "".join(json.dumps({"text": t, "labels": l}) + "\n" for t, l in MULTI_LABEL_ROWS)
        for name in ("train", "dev", "test"):
            (folder / f"{name}.jsonl").write_text(lines)
    else:
        lines = "text,label\n" + "".join(f"{t},{l}\n" for t, l in EMOTION_ROWS)
        for name in ("train", "test"):
            (folder / f"{name}.csv").write_text(lines)


def answers(config: str, workdir, capsys) -> dict:
    """What each reading verb answers for the run named by `config`, run from `workdir`."""
    out = {}
    (workdir / "in.csv").write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(TEXTS)))
    assert run_cli("predict", config, "--input", workdir / "in.csv", "--output", workdir / "out.csv") == 0
    out["predict"] = (workdir / "out.csv").read_text()
    capsys.readouterr()
    assert run_cli("classify", config, "--", *TEXTS) == 0
    out["classify"] = capsys.readouterr().out
    with TestClient(create_app(Classifier(load_config(config, [])).load(progress=False), ServeSettings())) as client:
        response = client.post("/v1/classify", json={"input": TEXTS})
        assert response.status_code == 200
        out["serve"] = [(item["label"], [round(p, 5) for p in item["probs"]]) for item in response.json()["data"]]
    return out


@pytest.mark.parametrize("stage", ["sft", "head"])
@pytest.mark.parametrize("multi_label", [False, True], ids=["single", "multi"])
def test_a_copied_run_without_its_data_serves_predicts_classifies_exports_and_evaluates(
    tmp_path, tiny_llama, monkeypatch, capsys, stage, multi_label
):
    home = tmp_path / "home"
    write_data(home / "data", multi_label)
    suffix = "jsonl" if multi_label else "csv"
    monkeypatch.chdir(home)  # relative paths in the config, as users write them
    config = tiny_config(
        home,
        tiny_llama,
        ".",
        dataset=f"data/train.{suffix}",
        output_dir="run",
        stage=stage,
        mode="score",
        max_steps=3,
        bf16=False,
        **({"select_dataset": "data/dev.jsonl"} if multi_label else {}),
    )
    assert run_cli("sft", config) == 0
    if multi_label:
        assert run_cli("calibrate", config) == 0  # thresholds.json: inference needs them too
    before = answers(str(home / "run"), home, capsys)

    elsewhere = tmp_path / "server"
    shutil.copytree(home / "run", elsewhere / "run")
    (elsewhere / f"test.{suffix}").write_text((home / "data" / f"test.{suffix}").read_text())
    shutil.rmtree(home)  # the training data and the original run are gone
    monkeypatch.chdir(elsewhere)
    run = str(elsewhere / "run")
    assert answers(run, elsewhere, capsys) == before
    assert run_cli("export", run, "--output", elsewhere / "exported") == 0
    assert (elsewhere / "exported" / "label_space.json").is_file()
    assert run_cli("generate-eval", run, f"eval_dataset=test.{suffix}") == 0
    metrics = json.loads((elsewhere / "run" / "eval" / "metrics.json").read_text())
    assert metrics["metrics"]["n"] == (len(MULTI_LABEL_ROWS) if multi_label else len(EMOTION_ROWS))
