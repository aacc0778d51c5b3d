"""instructemo ensemble: evaluated runs combined on the rows they were all judged on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_encoder
from helpers.cli import run_cli, tiny_config

from instructemo.data.labels import LabelSpace
from instructemo.evaluate.metrics import score
from instructemo.report.evaluation import write_eval_outputs

EMOTIONS = ("sadness", "joy", "love", "anger", "fear", "surprise")
TEXTS = ["a", "b", "c", "d"]


def evaluation(path: Path, predicted, gold, probabilities=None, names=EMOTIONS, multi_label=False, **context) -> Path:
    """An evaluation directory as generate-eval writes it, from given answers."""
    space = LabelSpace(tuple(names), multi_label)
    rows = []
    for i, (text, g, p) in enumerate(zip(TEXTS, gold, predicted)):
        row = {"id": None, "source": f"test.txt:{i + 2}", "text": text, "gold": list(g), "generation": None}
        row["predicted"] = list(p) if p is not None else None
        if probabilities is not None:
            row["probabilities"] = dict(zip(names, probabilities[i]))
        rows.append(row)
    metrics = score([tuple(g) for g in gold], predicted, space, probabilities)
    base = {"model": path.name, "adapter": None, "eval_dataset": "emotion:test", "mode": "score"}
    base |= {"also_used_for": [], "inference_seconds": 2.0}
    write_eval_outputs(path, rows, metrics, base | context)
    return path


def one_hot(labels: list[str], sure: float = 0.9) -> np.ndarray:
    rest = (1 - sure) / (len(EMOTIONS) - 1)
    return np.array([[sure if n == label else rest for n in EMOTIONS] for label in labels])


def read(path: Path, name: str):
    text = (path / name).read_text()
    return json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
def test_compare_then_ensemble_a_classification_head_and_a_generative_run(
    tmp_path, emotion_dir, tiny_llama, capsys, caplog
):
    """Two real runs, trained and evaluated by the CLI: compare puts them side by side, and the ensemble's labels
    are the argmax of their weighted mean probabilities."""
    encoder = build_tiny_encoder(tmp_path / "bert", "bert")
    cls_run, sft_run = tmp_path / "cls-run", tmp_path / "sft-run"
    cls = tiny_config(tmp_path / "a", encoder, emotion_dir, stage="head", output_dir=str(cls_run))
    sft = tiny_config(tmp_path / "b", tiny_llama, emotion_dir, output_dir=str(sft_run), num_train_epochs=1)
    assert run_cli("sft", cls, "do_eval=true") == 0
    assert run_cli("sft", sft, "do_eval=true") == 0  # generate mode: answers, no probabilities
    capsys.readouterr()
    cmp = tmp_path / "cmp"
    assert run_cli("compare", cls_run, sft_run / "eval", "--output", cmp) == 0
    printed = capsys.readouterr().out
    assert "| run | stage | mode | accuracy | macro F1 |" in printed and "F1 surprise" in printed
    compared = json.loads((cmp / "compare.json").read_text())
    assert [(r["stage"], r["mode"]) for r in compared] == [("head", "head"), ("sft", "generate")]
    for r in compared:
        metrics = json.loads(
            (Path(r["run"]) / ("metrics.json" if r["stage"] == "sft" else "eval/metrics.json")).read_text()
        )
        assert r["macro_f1"] == metrics["metrics"]["macro_f1"] and r["trainable_parameters"] > 0
        assert set(r["per_class_f1"]) == set(EMOTIONS)
    assert (cmp / "compare.md").read_text().strip() == printed.strip()
    assert (cmp / "per_class_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out = tmp_path / "ens"
    assert run_cli("ensemble", cls_run, sft_run, "--output", out) == 2
    assert "has no label probabilities (mode generate)" in capsys.readouterr().err and not out.exists()

    assert run_cli("generate-eval", sft, "mode=score") == 0
    assert run_cli("ensemble", cls_run, sft_run / "eval", "--output", out, "--weights", "2,1") == 0
    members = [read(cls_run / "eval", "predictions.jsonl"), read(sft_run / "eval", "predictions.jsonl")]
    rows = read(out, "predictions.jsonl")
    assert [r["text"] for r in rows] == [r["text"] for r in members[0]] and len(rows) == 6
    for row, a, b in zip(rows, *members):
        mean = {n: (2 * a["probabilities"][n] + b["probabilities"][n]) / 3 for n in EMOTIONS}
        assert row["predicted"] == [max(mean, key=mean.get)]
        assert row["probabilities"] == pytest.approx(mean, abs=1e-5)
        assert row["members"] == [a["predicted"], b["predicted"]]
    result = read(out, "metrics.json")
    accuracy = np.mean([r["predicted"] == r["gold"] for r in rows])
    assert result["metrics"]["accuracy"] == pytest.approx(accuracy) and result["mode"] == "ensemble"
    assert [m["weight"] for m in result["members"]] == [2.0, 1.0]
    assert result["weights"] == "given by the user (--weights)"
    # The tiny test split is made of training texts: every one is counted, once, across both members.
    assert result["texts_in_training"] == 6 and result["held_out"] is True
    assert "weights [2.0, 1.0]: if they were chosen by these rows' scores" in caplog.text
    assert "ensemble of cls-run + eval" in (out / "report.html").read_text()
    assert run_cli("compare", cls_run, out, "--output", tmp_path / "cmp2") == 0
    assert [r["stage"] for r in json.loads((tmp_path / "cmp2" / "compare.json").read_text())] == ["head", "ensemble"]


def test_multi_label_members_vote_and_half_the_weight_names_a_label(tmp_path):
    names = ("anger", "joy", "fear")
    gold = [("anger",), ("joy", "fear"), (), ("fear",)]
    answers = {
        "a": [("anger",), ("joy",), None, ("fear",)],
        "b": [("anger", "joy"), ("fear",), None, ()],
        "c": [("anger",), ("joy", "fear"), None, ("joy",)],
    }
    for name, predicted in answers.items():
        evaluation(tmp_path / name, predicted, gold, names=names, multi_label=True)
    assert run_cli("ensemble", tmp_path / "a", tmp_path / "b", tmp_path / "c", "--output", tmp_path / "abc") == 0
    # Two of three: anger / joy and fear / no valid answer from anyone / nothing the majority names.
    assert [r["predicted"] for r in read(tmp_path / "abc", "predictions.jsonl")] == [
        ["anger"],
        ["joy", "fear"],
        None,
        [],
    ]
    assert run_cli("ensemble", tmp_path / "a", tmp_path / "b", "--output", tmp_path / "ab") == 0
    # Two members: half the weight is either one, so their labels join.
    assert [r["predicted"] for r in read(tmp_path / "ab", "predictions.jsonl")][:2] == [
        ["anger", "joy"],
        ["joy", "fear"],
    ]
    result = read(tmp_path / "abc", "metrics.json")
    assert result["combination"].startswith("vote") and result["metrics"]["invalid"] == 1
    assert "jaccard" in result["metrics"] and "probabilities" not in read(tmp_path / "abc", "predictions.jsonl")[0]


@pytest.mark.slow
def test_what_an_ensemble_refuses_in_one_line(tmp_path, capsys):
    gold = [("joy",), ("sadness",), ("fear",), ("anger",)]
    labels = [g[0] for g in gold]
    a = evaluation(tmp_path / "a", gold, gold, one_hot(labels))
    b = evaluation(tmp_path / "b", gold, gold, one_hot(labels))
    dev = evaluation(tmp_path / "dev", gold, gold, one_hot(labels), eval_dataset="emotion:validation")
    relabelled = [("joy",), ("sadness",), ("fear",), ("love",)]
    other_gold = evaluation(tmp_path / "gold", relabelled, relabelled, one_hot([g[0] for g in relabelled]))
    names = ("negative", "positive")
    sentiment = evaluation(tmp_path / "sent", [("positive",)] * 4, [("positive",)] * 4, names=names)
    run_a = evaluation(tmp_path / "ra", gold, gold, one_hot(labels), adapter="saves/run-a")
    copied = evaluation(tmp_path / "copy", gold, gold, one_hot(labels), adapter="saves/run-a")  # a copied folder
    cut = evaluation(tmp_path / "cut", gold, gold, one_hot(labels))
    (cut / "predictions.jsonl").write_text((cut / "predictions.jsonl").read_text()[:-40])
    out = tmp_path / "ens"
    cases = [
        ((a,), "at least two evaluated runs"),
        ((a, a / "."), "are the same evaluation"),
        ((a, dev), "judged on emotion:test but"),
        ((a, other_gold), "row 4 of"),
        ((a, sentiment), "classify into different labels"),
        ((a, b, "--weights", "1"), "--weights gives 1 numbers for 2 runs"),
        ((a, b, "--weights", "1,-1"), "must be positive"),
        ((a, b, "--weights", "one,two"), "give numbers separated by commas"),
        ((a, tmp_path / "missing"), "no metrics.json"),
        ((a, b, "--weights", "1e308,1e308"), "whose sum is finite"),
        ((run_a, copied), "are evaluations of the same run (saves/run-a, mode score)"),
        ((a, cut), "predictions.jsonl:4 is not strict JSON"),
    ]
    for args, message in cases:
        assert run_cli("ensemble", *args, "--output", out) == 2, message
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    before = (a / "metrics.json").read_text()
    assert run_cli("ensemble", a, b, "--output", a) == 2
    assert "is the evaluation of" in capsys.readouterr().err and (a / "metrics.json").read_text() == before
    assert run_cli("ensemble", a, b, "--output", out) == 0
    assert read(out, "metrics.json")["metrics"]["accuracy"] == 1.0
