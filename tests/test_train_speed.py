"""Training shortcuts must not change what is learned: the same loss and gradients as the plain path."""

import pytest
import torch
from conftest import build_tiny_causal_lm
from helpers.cli import tiny_config

from instructemo.config.schema import load_config
from instructemo.data.datasets import load_split
from instructemo.models.batching import LeftPadCollator, shared_prompt_length
from instructemo.models.load import load_causal_lm, load_tokenizer
from instructemo.prompts.builder import PromptBuilder, load_template
from instructemo.train.trainer import build_sft_trainer


def test_shared_prompt_length_keeps_the_answer_predicting_position():
    rows = [
        {"input_ids": [1, 2, 3, 4, 9], "labels": [-100, -100, -100, -100, 9]},
        {"input_ids": [1, 2, 3, 5, 9], "labels": [-100, -100, -100, -100, 9]},
    ]
    assert shared_prompt_length(rows) == 3
    same = [rows[0], dict(rows[0])]  # identical rows: stop before the position that predicts the answer
    assert shared_prompt_length(same) == 3
    batch = LeftPadCollator(0, share_prefix=True)(rows)
    assert batch["prefix_ids"].tolist() == [[1, 2, 3]]
    assert batch["input_ids"].tolist() == [[4, 9], [5, 9]]
    assert batch["position_ids"].tolist() == [[3, 4], [3, 4]]


def test_packing_puts_short_rows_beside_each_other():
    rows = [
        {"input_ids": [1, 2, 3, *rest, 9], "labels": [-100, -100, -100, *[-100] * len(rest), 9]}
        for rest in ([4, 5, 6, 7], [4], [5], [6, 6])
    ]
    batch = LeftPadCollator(0, share_prefix=True, pack=True)(rows)
    assert batch["prefix_ids"].tolist() == [[1, 2, 3]]
    # rests of 5, 2, 2 and 3 tokens, packed into rows as wide as the longest: [5], [3, 2], [2]
    kept = sorted(
        tuple(t for t, s in zip(ids, seg) if s == n)
        for ids, seg in zip(batch["input_ids"].tolist(), batch["segments"].tolist())
        for n in set(seg) - {0}
    )
    assert kept == sorted([(4, 5, 6, 7, 9), (4, 9), (5, 9), (6, 6, 9)])  # every row once, whole
    assert batch["input_ids"].shape == (3, 5)
    for positions, seg in zip(batch["position_ids"].tolist(), batch["segments"].tolist()):
        starts = [i for i, s in enumerate(seg) if s and (i == 0 or seg[i - 1] != s)]
        assert all(positions[i] == 3 for i in starts)  # each packed row restarts after the prefix
    assert (batch["labels"] != -100).sum() == 4


@pytest.mark.parametrize("model_type,attention", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")])
def test_shared_prefix_gives_the_same_loss_and_gradients(tmp_path, emotion_dir, model_type, attention):
    model_dir = build_tiny_causal_lm(tmp_path / model_type, model_type)
    cfg = load_config(tiny_config(tmp_path, model_dir, emotion_dir, bf16=False))
    tokenizer = load_tokenizer(str(model_dir))
    split = load_split(cfg.dataset, cfg.dataset_dir)
    builder = PromptBuilder(tokenizer, load_template(cfg.template, split.template), split.label_space, cfg.cutoff_len)
    examples = [builder.training_example(r) for r in split.records]
    model = load_causal_lm(str(model_dir), flash_attn=attention, bf16=False)
    trainer = build_sft_trainer(cfg, model, tokenizer, examples, bf16=False)
    rows = [trainer.train_dataset[i] for i in range(len(examples))]
    # Rows of different lengths, so the rests are padded in the middle of the sequence.
    assert len({len(r["input_ids"]) for r in rows}) > 1

    def loss_and_grads(share: bool, pack: bool = False, rows=rows):
        batch = LeftPadCollator(tokenizer.pad_token_id, share_prefix=share, pack=pack)(rows)
        assert ("prefix_ids" in batch) == share and ("segments" in batch) == pack
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    plain_loss, plain = loss_and_grads(False)
    assert plain
    for share, pack in ((True, False), (True, True)):
        loss, grads = loss_and_grads(share, pack)
        torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
        assert plain.keys() == grads.keys()
        for name in plain:
            torch.testing.assert_close(grads[name], plain[name], rtol=1e-4, atol=1e-6, msg=f"{name} (pack={pack})")
    weighted = [{**r, "weight": 1.0 + i % 3} for i, r in enumerate(rows)]  # label_balancing: loss_weight
    # The weighted loss is sum over rows of weight x (the row's summed token loss), over all answer tokens:
    # worked out here from one-row batches, whose loss is their mean token loss.
    tokens = [sum(t != -100 for t in r["labels"][1:]) for r in rows]
    row_sums = [loss_and_grads(False, rows=[r])[0] * n for r, n in zip(rows, tokens)]
    expected = sum(r["weight"] * s for r, s in zip(weighted, row_sums)) / sum(tokens)
    assert expected != pytest.approx(plain_loss.item(), rel=1e-3)  # the weights matter here
    for share, pack in ((False, False), (True, False), (True, True)):
        torch.testing.assert_close(loss_and_grads(share, pack, weighted)[0], expected, rtol=1e-5, atol=1e-6)


def test_cpu_training_picks_eager_attention_and_inference_sdpa():
    from instructemo.models.load import pick_attention

    if torch.cuda.is_available():
        pytest.skip("the CPU choice")
    assert pick_attention("auto", training=True) == "eager"
    assert pick_attention("auto") == "sdpa"
    assert pick_attention("sdpa", training=True) == "sdpa"


def test_length_grouped_batches_come_in_shuffled_order():
    from instructemo.models.batching import epoch_seeded_sampler

    lengths = [int(x) for x in torch.randint(5, 200, (800,), generator=torch.Generator().manual_seed(1))]
    sampler = epoch_seeded_sampler(16, lengths, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(800))  # every row once
    batches = [first[i : i + 16] for i in range(0, 800, 16)]
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sum(spans) / len(spans) < 20  # similar lengths in a batch: little padding
    widths = [max(lengths[i] for i in b) for b in batches[1:]]
    descents = sum(a >= b for a, b in zip(widths, widths[1:]))
    assert 0.3 < descents / len(widths) < 0.7  # not longest-to-shortest: a shuffled order
    assert list(sampler) == first  # the same (seed, epoch), the same order
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_packed_random_batches_train_from_the_command_line(tmp_path, emotion_dir, tiny_llama):
    import json

    from helpers.cli import run_cli

    config = tiny_config(tmp_path, tiny_llama, emotion_dir)  # packing and random batches are the defaults
    assert run_cli("sft", config) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "trainer_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in log if "loss" in h]
    assert losses[-1] < losses[0]
    assert run_cli("generate-eval", config) == 0


def test_batch_order_auto_is_random_when_rows_are_packed(tmp_path, emotion_dir, tiny_llama):
    from instructemo.train.trainer import trainer_arguments

    def order(packed: bool, **keys) -> str:
        cfg = load_config(tiny_config(tmp_path, tiny_llama, emotion_dir, **keys))
        return trainer_arguments(cfg, False, packed=packed)["train_sampling_strategy"]

    assert order(True) == "random" and order(False) == "group_by_length"  # auto: padding rows are grouped
    assert order(True, group_by_length=True) == "group_by_length"
    assert order(False, group_by_length=False) == "random"
