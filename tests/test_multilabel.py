"""Multi-label and imbalance: balancing, checkpoint selection, thresholds and cross-validation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MULTI_LABEL_ROWS
from helpers.cli import run_cli, tiny_config
from helpers.selection import SELECT, assert_best_checkpoint_kept

from instructemo.data.balance import balanced_examples, oversample_counts, rarest_label_weights
from instructemo.models.batching import LeftPadCollator


def test_rarest_label_weights_favour_rare_labels():
    sets = [("anger",), ("anger",), ("anger", "surprise"), ()]
    weights = rarest_label_weights(sets)
    assert np.mean(weights) == pytest.approx(1.0)
    # anger: 3 of 4 rows, surprise and "no label": 1 of 4 each.
    assert weights[0] == weights[1] < weights[2] == weights[3]
    assert weights[2] / weights[0] == pytest.approx(3.0)
    assert oversample_counts([0.2, 1.4, 2.6]) == [1, 1, 3]


def test_balanced_policies():
    sets = [("joy",)] * 8 + [("fear",)] * 2
    rows = [{"i": i} for i in range(10)]
    assert balanced_examples("none", sets, rows) is rows
    weighted = balanced_examples("loss_weight", sets, rows)
    assert [r["weight"] for r in weighted][-1] == pytest.approx(4 * weighted[0]["weight"])
    oversampled = balanced_examples("oversample", sets, rows)  # weights 0.625 and 2.5
    assert [r["i"] for r in oversampled].count(9) == 2 and [r["i"] for r in oversampled].count(0) == 1


def test_collator_passes_loss_weights():
    batch = LeftPadCollator(0)(
        [{"input_ids": [5, 6], "labels": [-100, 6], "weight": 2.0}, {"input_ids": [7], "labels": [7], "weight": 0.5}]
    )
    assert batch["weights"].tolist() == [2.0, 0.5]


@pytest.mark.slow
def test_sft_with_label_balancing(tmp_path, tiny_llama):
    """On imbalanced rows, oversample trains on more rows and loss_weight changes the loss: neither is ignored."""
    from conftest import write_emotion_txt

    rows = [("i feel so happy and cheerful today", "joy")] * 9 + [("i am scared of the dark house", "fear")]
    write_emotion_txt(tmp_path / "data" / "emotion" / "train.txt", rows)
    first_loss, trained_rows = {}, {}
    for policy in ("none", "oversample", "loss_weight"):
        config = tiny_config(
            tmp_path / policy,
            tiny_llama,
            tmp_path / "data",
            label_balancing=policy,
            max_steps=1,
            per_device_train_batch_size=32,
            shared_prefix=False,
        )
        assert run_cli("sft", config) == 0
        run = tmp_path / policy / "run"
        first_loss[policy] = next(
            json.loads(line)["loss"]
            for line in (run / "trainer_log.jsonl").read_text().splitlines()
            if '"loss"' in line
        )
        trained_rows[policy] = json.loads((run / "train_results.json").read_text())["train_rows"]
    assert trained_rows["none"] == trained_rows["loss_weight"] == 10
    assert trained_rows["oversample"] == 9 + round(rarest_label_weights([("joy",)] * 9 + [("fear",)])[-1])
    # one batch holds every row: the weighted loss is sum(w * row loss) / tokens, with fear weighing 5x joy
    assert first_loss["loss_weight"] != pytest.approx(first_loss["none"], rel=1e-3)
    assert first_loss["oversample"] != pytest.approx(first_loss["none"], rel=1e-3)


def dev_score(base, adapter_dir, config) -> float:
    """The dev split's macro-F1 for the weights in adapter_dir, worked out here: greedy answers, parsed, scored."""
    from instructemo.config.schema import load_config
    from instructemo.data.datasets import load_split
    from instructemo.evaluate.metrics import score
    from instructemo.infer.hf import decode_answers, generate_ids
    from instructemo.infer.loading import load_causal_run
    from instructemo.prompts.builder import PromptBuilder, load_template
    from instructemo.prompts.parse import parse_labels

    cfg = load_config(config)
    model, tokenizer = load_causal_run(
        str(base), adapter_dir, device=torch.device("cpu"), flash_attn="auto", bf16=False
    )
    dev = load_split("emotion:validation", cfg.dataset_dir)
    builder = PromptBuilder(tokenizer, load_template("auto", dev.template), dev.label_space, cfg.cutoff_len)
    ids, stops = generate_ids(
        model,
        tokenizer,
        [builder.prompt(r.text) for r in dev.records],
        batch_size=4,
        max_new_tokens=cfg.max_new_tokens,
        progress=False,
    )
    answers = decode_answers(tokenizer, ids, stops)
    return score([r.labels for r in dev.records], [parse_labels(a, dev.label_space) for a in answers], dev.label_space)[
        "macro_f1"
    ]


def test_sft_keeps_the_best_checkpoint(tmp_path, tiny_llama, emotion_dir):
    """The saved adapter holds the weights of the step that classifies dev best, scored here for each checkpoint."""

    config = tiny_config(tmp_path, tiny_llama, emotion_dir, **SELECT)
    assert run_cli("sft", config) == 0
    run = tmp_path / "run"
    selection = json.loads((run / "selection.json").read_text())
    assert [p["step"] for p in selection["history"]] == [2, 4, 6]  # every 2 steps; the epoch ends fall on them
    scores = {step: dev_score(tiny_llama, run / f"checkpoint-{step}", config) for step in (2, 4, 6)}
    assert_best_checkpoint_kept(run, selection, scores)
    assert selection["metric"] == "macro_f1" and selection["dev_rows"] == 6


@pytest.mark.slow
def test_select_best_after_a_resume_chooses_among_the_whole_run(tmp_path, tiny_llama, emotion_dir):
    """Killed after checkpoint-4 and resumed: the selection still knows steps 2 and 4."""
    import os
    import subprocess
    import sys

    whole = tiny_config(tmp_path / "whole", tiny_llama, emotion_dir, **SELECT)
    assert run_cli("sft", whole) == 0
    config = tiny_config(tmp_path / "killed", tiny_llama, emotion_dir, **SELECT)
    harness = Path(__file__).parent / "fault_harness.py"
    killed = subprocess.run(
        [sys.executable, str(harness), "sft", config],
        capture_output=True,
        env={**os.environ, "INSTRUCTEMO_FAULT": "kill:checkpoint-4"},
    )
    assert killed.returncode == -9
    assert run_cli("sft", config, "resume=auto") == 0
    resumed = json.loads((tmp_path / "killed" / "run" / "selection.json").read_text())
    reference = json.loads((tmp_path / "whole" / "run" / "selection.json").read_text())
    assert [p["step"] for p in resumed["history"]] == [2, 4, 6]
    assert [p["macro_f1"] for p in resumed["history"]] == pytest.approx([p["macro_f1"] for p in reference["history"]])
    assert resumed["best"]["step"] == reference["best"]["step"]


def test_selecting_on_a_multi_label_metric_needs_multi_label_data(tmp_path, tiny_llama, emotion_dir, capsys):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, select_best=True, select_metric="jaccard")
    assert run_cli("sft", config) == 2
    assert "select_metric jaccard is for multi-label data" in capsys.readouterr().err


# --- score mode: per-label probabilities and thresholds ---------------------------

from helpers.scoring import brute_force_token_loglik  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from instructemo.data.labels import LabelSpace, binarize  # noqa: E402
from instructemo.evaluate.metrics import best_thresholds  # noqa: E402
from instructemo.infer.hf import score_continuations  # noqa: E402
from instructemo.infer.multilabel import label_probabilities  # noqa: E402
from instructemo.models.chat import answer_tokens  # noqa: E402

SPACE = LabelSpace(("joy", "fear", "sadness", "anger"), multi_label=True)
PROMPTS = [[{"role": "user", "content": f"labels for : {t}"}] for t in ["i feel happy and scared", "so sad", "wow"]]


class FixedAnswers:
    """An engine whose greedy answers are given, scoring with the real tree scorer."""

    def __init__(self, model, tokenizer, answers):
        self.model, self.tokenizer, self.answers = model, tokenizer, answers

    def generate(self, conversations):
        return self.answers

    def score_tokens(self, contexts, continuations):
        return score_continuations(
            self.model, contexts, continuations, batch_size=2, pad_id=self.tokenizer.pad_token_id
        )


def test_label_probabilities_follow_the_greedy_answer(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    greedy = ["joy, sadness", "sadness", "not a label at all"]
    probabilities, answers = label_probabilities(FixedAnswers(model, tokenizer, greedy), PROMPTS, SPACE)
    assert answers == greedy and probabilities.shape == (3, 4)
    eot = tokenizer.eos_token_id
    for row, labels in enumerate([("joy", "sadness"), ("sadness",), ()]):
        for k, name in enumerate(SPACE.names):
            before = tuple(l for l in labels if SPACE.names.index(l) < k)
            last = SPACE.names.index(before[-1]) if before else -1
            options = {}
            for later in SPACE.names[last + 1 :]:
                ids = answer_tokens(tokenizer, PROMPTS[row], SPACE.answer(before + (later,)))
                options[later] = brute_force_token_loglik(
                    model, tokenizer, PROMPTS[row], ids[:-1] if ids[-1] == eot else ids
                )
            options["<end>"] = brute_force_token_loglik(
                model, tokenizer, PROMPTS[row], answer_tokens(tokenizer, PROMPTS[row], SPACE.answer(before))
            )
            expected = np.exp(options[name]) / sum(np.exp(v) for v in options.values()) if name in options else 0.0
            assert probabilities[row, k] == pytest.approx(expected, abs=1e-4), (row, name)


def test_best_thresholds_maximise_each_labels_f1():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    gold = rng.random((60, 3)) < [0.5, 0.1, 0.0]
    probabilities = np.clip(gold * 0.3 + rng.random((60, 3)) * 0.7, 0, 1).round(2)  # ties included
    thresholds, f1 = best_thresholds(probabilities, gold)
    for k in range(2):
        candidates = [f1_score(gold[:, k], probabilities[:, k] >= t) for t in np.unique(probabilities[:, k])]
        assert f1[k] == pytest.approx(max(candidates))
        assert f1_score(gold[:, k], probabilities[:, k] >= thresholds[k]) == pytest.approx(f1[k])
    assert thresholds[2] == 1.0 and f1[2] == 0.0  # never present: never predicted


def multi_label_files(tmp_path):
    for name in ("train", "dev"):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": t, "labels": l}) + "\n" for t, l in MULTI_LABEL_ROWS)
        )
    return tmp_path / "train.jsonl", tmp_path / "dev.jsonl"


def test_calibrate_then_score_mode_uses_the_thresholds(tmp_path, tiny_llama):
    train, dev = multi_label_files(tmp_path)
    config = tiny_config(
        tmp_path,
        tiny_llama,
        tmp_path,
        dataset=str(train),
        eval_dataset=str(dev),
        select_dataset=str(dev),
        mode="score",
        max_steps=3,
        max_new_tokens=8,
    )
    assert run_cli("sft", config) == 0
    assert run_cli("calibrate", config) == 0
    stored = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    assert list(stored["thresholds"]) == ["fear", "joy", "sadness"] and stored["rows"] == 6  # inferred: sorted
    assert run_cli("generate-eval", config) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()]
    for row in rows:
        for name, p in row["probabilities"].items():  # probabilities are written rounded to 6 decimals
            threshold = stored["thresholds"][name]
            assert (p >= threshold - 1e-6) if name in row["predicted"] else (p < threshold + 1e-6)
        assert row["generation"] is not None  # the greedy answer the probabilities condition on


@pytest.mark.slow
def test_calibrated_thresholds_take_precedence_over_score_threshold(tmp_path, tiny_llama, caplog):
    """One rule: thresholds.json when the run has it, else score_threshold, else 0.5; metrics.json says which."""
    train, dev = multi_label_files(tmp_path)
    config = tiny_config(
        tmp_path,
        tiny_llama,
        tmp_path,
        dataset=str(train),
        eval_dataset=str(dev),
        select_dataset=str(dev),
        mode="score",
        max_steps=3,
        max_new_tokens=8,
    )
    assert run_cli("sft", config) == 0
    run = tmp_path / "run"

    def evaluate(*overrides):
        assert run_cli("generate-eval", config, *overrides) == 0
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        rows = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
        return metrics["thresholds"], rows

    used, _ = evaluate()
    assert used == {"source": "default", "values": {"fear": 0.5, "joy": 0.5, "sadness": 0.5}}
    used, rows = evaluate("score_threshold=0.01")  # no calibration yet: score_threshold applies
    assert used["source"] == "score_threshold" and set(used["values"].values()) == {0.01}
    assert all(sorted(r["predicted"]) == sorted(k for k, p in r["probabilities"].items() if p >= 0.01) for r in rows)
    assert run_cli("calibrate", config) == 0
    stored = json.loads((run / "thresholds.json").read_text())["thresholds"]
    caplog.clear()
    used, rows = evaluate("score_threshold=0.01")  # calibrated: thresholds.json wins, and the log says so
    assert used == {"source": "calibrated", "values": stored}
    assert "score_threshold 0.01 is not used" in caplog.text
    for row in rows:
        assert sorted(row["predicted"]) == sorted(k for k, p in row["probabilities"].items() if p >= stored[k] - 1e-6)


@pytest.mark.slow
def test_an_evaluation_on_the_rows_that_tuned_the_run_is_marked_not_held_out(tmp_path, tiny_llama, caplog):
    """Selection and calibration on dev, then evaluated on dev: said loudly, and recorded in metrics.json."""
    train, dev = multi_label_files(tmp_path)
    (tmp_path / "test.jsonl").write_text(dev.read_text())  # the same texts, another split: not the tuning split
    config = tiny_config(
        tmp_path,
        tiny_llama,
        tmp_path,
        dataset=str(train),
        eval_dataset=str(dev),
        select_dataset=str(dev),
        select_best=True,
        mode="score",
        max_steps=3,
        max_new_tokens=8,
    )
    assert run_cli("sft", config) == 0
    assert run_cli("calibrate", config) == 0
    caplog.clear()
    assert run_cli("generate-eval", config) == 0
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["held_out"] is False
    assert metrics["also_used_for"] == ["checkpoint selection (select_best)", "threshold calibration"]
    assert "NOT HELD OUT" in caplog.text
    assert "Not held out" in (tmp_path / "run" / "eval" / "report.md").read_text()
    assert run_cli("generate-eval", config, f"eval_dataset={tmp_path / 'test.jsonl'}") == 0
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["held_out"] is True and metrics["also_used_for"] == []


def test_calibrate_refuses_single_label_models(tmp_path, tiny_llama, emotion_dir, capsys):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=1)
    assert run_cli("sft", config) == 0
    assert run_cli("calibrate", config) == 2
    assert "per-label thresholds for multi-label models" in capsys.readouterr().err


# --- cross-validation and held-out splits ----------------------------------------

from instructemo.data.datasets import Record, Split  # noqa: E402
from instructemo.data.stratify import fold_indices, held_out_indices  # noqa: E402


def make_split(label_sets, multi_label):
    names = tuple(sorted({l for s in label_sets for l in s}))
    records = [Record(f"text {i}", tuple(s), str(i), f"f:{i}") for i, s in enumerate(label_sets)]
    return Split("train", records, LabelSpace(names, multi_label=multi_label), "auto", "test")


def test_folds_partition_the_rows_and_keep_label_shares():
    rng = np.random.default_rng(1)
    sets = [tuple(l for l, p in zip("abcd", [0.5, 0.3, 0.15, 0.08]) if rng.random() < p) for _ in range(200)]
    split = make_split(sets, multi_label=True)
    folds = fold_indices(split, 4, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(200))
    gold = binarize([r.labels for r in split.records], split.label_space)
    overall = gold.mean(axis=0)
    for held_out in folds:  # every fold holds close to the overall share of each label, rare ones included
        assert np.abs(gold[held_out].mean(axis=0) - overall).max() < 0.05

    single = make_split([("x",)] * 30 + [("y",)] * 10, multi_label=False)
    for held_out in fold_indices(single, 5, seed=0):
        assert sorted(r.labels[0] for r in np.array(single.records)[held_out]) == ["x"] * 6 + ["y"] * 2


def test_a_held_out_part_keeps_each_labels_share_when_label_sets_rarely_repeat():
    """Most multi-label combinations occur once: the test part still gets its fraction of rows and of each label."""
    rng = np.random.default_rng(2)
    labels = "abcdefgh"
    sets = [tuple(l for l in labels if rng.random() < 0.3) for _ in range(300)]
    split = make_split(sets, multi_label=True)
    assert len(set(sets)) > 100  # the combinations that grouping by label set kept out of the test part
    test = held_out_indices(split, 0.2, seed=42)
    assert 55 <= len(test) <= 65 and test == sorted(set(test)) and test == held_out_indices(split, 0.2, seed=42)
    gold = binarize([r.labels for r in split.records], split.label_space)
    assert np.abs(gold[test].mean(axis=0) - gold.mean(axis=0)).max() < 0.05
    single = make_split([("x",)] * 30 + [("y",)] * 10 + [("z",)], multi_label=False)
    test = held_out_indices(single, 0.2, seed=0)
    assert sorted(single.records[i].labels[0] for i in test) == ["x"] * 6 + ["y"] * 2  # z's one row trains


def test_fold_errors_say_what_to_change():
    from instructemo.errors import UserError

    with pytest.raises(UserError, match="fewer than --folds 3"):
        fold_indices(make_split([("x",)] * 5 + [("y",)] * 2, multi_label=False), 3, seed=0)
    with pytest.raises(UserError, match="at least 2 folds"):
        fold_indices(make_split([("x",)] * 5, multi_label=False), 1, seed=0)


@pytest.mark.slow
def test_cv_runs_every_fold_and_summarises(tmp_path, tiny_llama, emotion_dir, capsys):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, num_train_epochs=1)
    assert run_cli("cv", config, "--folds", 2) == 0
    root = tmp_path / "run" / "cv"
    summary = json.loads((root / "summary.json").read_text())
    assert summary["folds"] == 2 and summary["rows"] == 12 and summary["stratification"] == "stratified"
    accuracy = summary["metrics"]["accuracy"]
    assert len(accuracy["folds"]) == 2 and accuracy["mean"] == pytest.approx(np.mean(accuracy["folds"]))
    assert accuracy["std"] == pytest.approx(np.std(accuracy["folds"], ddof=1))
    for k in (1, 2):
        fold = json.loads((root / f"fold-{k}" / "eval" / "metrics.json").read_text())
        assert fold["metrics"]["n"] == 6 and fold["metrics"]["accuracy"] == accuracy["folds"][k - 1]
    assert set(summary["per_label_f1"]) == {"sadness", "joy", "love", "anger", "fear", "surprise"}
    assert "| macro_f1 |" in capsys.readouterr().out


# --- the real multi-label datasets, end to end on the tiny model -------------------


@pytest.mark.slow
@pytest.mark.parametrize("dataset, eval_split, labels", [("semeval2018_ec", "dev", 11), ("goemotions", "dev", 28)])
def test_real_multi_label_datasets_end_to_end(tmp_path, tiny_llama, shared_data, dataset, eval_split, labels):
    config = tiny_config(
        tmp_path,
        tiny_llama,
        tmp_path / "nothing-here",
        dataset=dataset,
        eval_dataset=f"{dataset}:{eval_split}",
        max_samples=48,
        max_eval_samples=16,
        max_steps=2,
        cutoff_len=256,
        max_new_tokens=8,
        label_balancing="loss_weight",
    )
    assert run_cli("sft", config) == 0
    space = json.loads((tmp_path / "run" / "label_space.json").read_text())
    assert space["multi_label"] and len(space["names"]) == labels and space["none_word"]
    for mode in ("generate", "score"):
        assert run_cli("generate-eval", config, f"mode={mode}", f"eval_output_dir={tmp_path / 'run' / mode}") == 0
        metrics = json.loads((tmp_path / "run" / mode / "metrics.json").read_text())["metrics"]
        assert metrics["n"] == 16 and {"jaccard", "exact_match", "micro_f1", "macro_f1", "label_confusion"} <= set(
            metrics
        )
        assert len(metrics["per_class"]) == labels
