"""Inference modes on a tiny Llama: generate, score (with shared caches), and predict on files."""

import csv
import json

import numpy as np
import pytest
from helpers.cli import tiny_config
from helpers.scoring import brute_force_scores
from transformers import AutoModelForCausalLM, AutoTokenizer

from instructemo.cli import main
from instructemo.evaluate.metrics import expected_calibration_error
from instructemo.infer.hf import SharedPrefix, score_answers
from instructemo.models.batching import common_prefix_length, packed_batches
from instructemo.models.chat import answer_tokens, prompt_token_ids

CONVERSATIONS = [
    [{"role": "user", "content": f"classify this : {t}"}]
    for t in ["i feel happy", "so sad and lonely tonight i cried", "wow", "i adore my sweet partner"]
]


@pytest.fixture
def tiny_model(tiny_llama):
    """(model, tokenizer) of the tiny Llama, loaded with transformers alone."""
    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def test_score_answers_equals_full_forward(tiny_model):
    model, tokenizer = tiny_model
    answers = ["joy", "sadness", "none", "i feel happy"]  # one and several tokens
    scores = score_answers(model, tokenizer, CONVERSATIONS, answers, batch_size=3)
    assert scores.numpy() == pytest.approx(brute_force_scores(model, tokenizer, CONVERSATIONS, answers), abs=1e-4)


def test_packed_scoring_equals_full_forward(tiny_model):
    """Short texts packed beside a long one in the same row are each scored as alone."""
    model, tokenizer = tiny_model
    texts = ["so sad and lonely tonight i cried " * 6, "wow", "i feel happy", "so sad", "wow wow", "i adore it"]
    conversations = [[{"role": "user", "content": f"classify this : {t}"}] for t in texts]
    answers = ["joy", "sadness", "i feel happy"]
    contexts = prompt_token_ids(tokenizer, conversations)
    prefix = common_prefix_length(contexts)
    width = sum(len(answer_tokens(tokenizer, conversations[0], a)) - 1 for a in answers)
    plan = packed_batches([len(c) - prefix + width for c in contexts], 2)
    assert max(len(row) for batch in plan for row in batch) >= 3  # the short ones share the long one's row
    scores = score_answers(model, tokenizer, conversations, answers, batch_size=2)
    assert scores.numpy() == pytest.approx(brute_force_scores(model, tokenizer, conversations, answers), abs=1e-4)


def test_prefix_kept_across_calls_gives_the_same_scores(tiny_model):
    """One text at a time, as a server calls: the kept prefix shrinks to what every prompt shares, scores unchanged."""
    model, tokenizer = tiny_model
    answers = ["joy", "sadness"]
    kept = SharedPrefix()
    for conversations in ([CONVERSATIONS[1]], CONVERSATIONS[:3], [CONVERSATIONS[3]], [CONVERSATIONS[1]]):
        scores = score_answers(model, tokenizer, conversations, answers, batch_size=2, prefix=kept)
        assert scores.numpy() == pytest.approx(brute_force_scores(model, tokenizer, conversations, answers), abs=1e-4)
    shared = common_prefix_length(prompt_token_ids(tokenizer, CONVERSATIONS))
    assert len(kept.ids) == shared  # the instruction every prompt starts with, not the first text's whole prompt


def test_packed_batches_fill_the_room_beside_long_items():
    sizes = [10, 2, 9, 3, 8, 1, 1, 4]
    plan = packed_batches(sizes, rows=2)
    assert sorted(i for batch in plan for row in batch for i in row) == list(range(len(sizes)))  # each once
    for batch in plan:
        assert len(batch) <= 2 and sum(map(len, batch)) <= 4
        assert all(sum(sizes[i] for i in row) <= max(sizes) for row in batch)
    # first fit, longest first: [10], [9, 1], [8, 2], [4, 3, 1]; the fullest rows first, at most 4 items a batch
    assert plan == [[[0], [2, 5]], [[4, 1]], [[7, 3, 6]]]
    tokens_run = sum(len(batch) * max(sum(sizes[i] for i in row) for row in batch) for batch in plan)
    assert tokens_run == 38  # padded (longest_first): 44
    assert packed_batches([5, 5, 5], rows=2) == [[[0], [1]], [[2]]]  # nothing fits beside an equal item


def test_answer_tokens_end_at_end_of_turn(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ids = answer_tokens(tokenizer, CONVERSATIONS[0], "joy")
    assert tokenizer.convert_ids_to_tokens(ids) == ["joy", "<|im_end|>"]


def test_expected_calibration_error():
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([1, 1])) == pytest.approx(0.1)
    assert expected_calibration_error(np.array([0.25, 0.75]), np.array([0, 1])) == pytest.approx(0.25)


def test_score_mode_gives_a_valid_label_and_probabilities(tmp_path, tiny_llama, emotion_dir):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, mode="score")
    assert main(["generate-eval", config]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["predicted"] is not None and len(row["predicted"]) == 1
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["predicted"][0] == max(row["probabilities"], key=row["probabilities"].get)
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["mode"] == "score" and metrics["metrics"]["invalid"] == 0
    assert 0 <= metrics["metrics"]["ece"] <= 1


def test_multi_label_score_mode_uses_the_threshold(tmp_path, tiny_llama):
    data = tmp_path / "ml.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": t, "labels": l}) + "\n"
            for t, l in [("i feel happy and scared", ["joy", "fear"]), ("so sad", ["sadness"]), ("here", [])]
        )
    )
    config = tiny_config(
        tmp_path, tiny_llama, tmp_path, dataset=str(data), eval_dataset=str(data), mode="score", score_threshold=0.01
    )
    assert main(["generate-eval", config]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()]
    for row in rows:  # a tiny threshold keeps every label above it
        assert row["predicted"] == [n for n, p in row["probabilities"].items() if p >= 0.01]


def write_input(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="," if path.suffix == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_predict_each_format_keeps_ids_and_reports_empty_text(tmp_path, tiny_llama, emotion_dir, suffix, caplog):
    rows = [{"id": "a1", "text": "i feel happy"}, {"id": "a2", "text": "  "}, {"id": "a3", "text": "so sad"}]
    source = write_input(tmp_path / f"in{suffix}", rows)
    out = tmp_path / f"out{suffix}"
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, mode="score")
    assert main(["predict", config, "--input", str(source), "--output", str(out)]) == 0
    if suffix == ".jsonl":
        written = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        written = list(csv.DictReader(out.open(), delimiter="," if suffix == ".csv" else "\t"))
    assert [r["id"] for r in written] == ["a1", "a2", "a3"]  # no row dropped
    assert written[1]["label"] == "" and written[0]["label"] in {"sadness", "joy", "love", "anger", "fear", "surprise"}
    assert float(written[0]["probability"]) > 0
    assert "1 row(s) have empty text" in caplog.text
    report = (tmp_path / "out.report.html").read_text()
    assert "Prediction report" in report and "(empty text)" in report and "data:image/png;base64," in report


def test_predict_multi_label_writes_the_submission_layout(tmp_path, tiny_llama):
    data = tmp_path / "ml.jsonl"
    data.write_text(
        '{"text": "happy and scared", "labels": ["joy", "fear"]}\n{"text": "so sad", "labels": ["sadness"]}\n'
    )
    source = write_input(
        tmp_path / "test.tsv", [{"ID": "2018-En-1", "Tweet": "so sad"}, {"ID": "2018-En-2", "Tweet": "yay"}]
    )
    out = tmp_path / "submission.csv"
    config = tiny_config(tmp_path, tiny_llama, tmp_path, dataset=str(data), mode="score")
    assert main(["predict", config, "--input", str(source), "--output", str(out), "--text-column", "Tweet"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "ID,fear,joy,sadness"
    assert lines[1].startswith("2018-En-1,") and set(lines[1].split(",")[1:]) <= {"0", "1"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("words,id\nhello,1\n", "cannot tell which column holds the text"),
        ("", "has no rows"),
        ("text,id\n", "has no rows"),
    ],
)
def test_predict_bad_input(tmp_path, tiny_llama, emotion_dir, capsys, content, message):
    source = tmp_path / "in.csv"
    source.write_text(content)
    config = tiny_config(tmp_path, tiny_llama, emotion_dir)
    assert main(["predict", config, "--input", str(source), "--output", str(tmp_path / "out.csv")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_unknown_label_in_a_gold_column(tmp_path, tiny_llama, emotion_dir, capsys):
    gold = tmp_path / "gold.csv"
    gold.write_text("text,label\ni feel happy,joy\ni feel odd,confusion\n")
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, eval_dataset=str(gold))
    assert main(["generate-eval", config]) == 2
    err = capsys.readouterr().err
    assert "1 bad row(s)" in err and "gold.csv:3: label(s) ['confusion'] outside the label space" in err


def test_the_kept_prefix_never_pairs_new_ids_with_an_old_cache_across_threads(tiny_model, monkeypatch):
    """The web UI's Try and a server call from several threads. The ids were set before the slow rebuild of their
    cache, so a second thread paired the new ids with the old cache and scored with the wrong keys and values."""
    import threading
    import time

    from instructemo.infer import hf

    model, tokenizer = tiny_model
    answers = ["joy", "sadness"]
    kept = SharedPrefix()
    score_answers(model, tokenizer, [CONVERSATIONS[1]], answers, batch_size=2, prefix=kept)  # kept: that whole prompt
    encode = hf.encode_prefix
    monkeypatch.setattr(hf, "encode_prefix", lambda *a, **k: (time.sleep(0.3), encode(*a, **k))[1])
    results, errors = {}, []

    def score(name, conversations):
        try:
            results[name] = score_answers(model, tokenizer, conversations, answers, batch_size=2, prefix=kept)
        except Exception as exc:  # a shape mismatch is as wrong as a wrong score
            errors.append(exc)

    rebuild = threading.Thread(target=score, args=("rebuild", [CONVERSATIONS[3]]))  # shrinks the kept prefix
    rebuild.start()
    time.sleep(0.1)  # while the shorter prefix's cache is being built
    reader = threading.Thread(target=score, args=("reader", [CONVERSATIONS[2]]))
    reader.start()
    rebuild.join(), reader.join()
    assert not errors
    for name, conversations in (("rebuild", [CONVERSATIONS[3]]), ("reader", [CONVERSATIONS[2]])):
        expected = brute_force_scores(model, tokenizer, conversations, answers)
        assert results[name].numpy() == pytest.approx(expected, abs=1e-4)
