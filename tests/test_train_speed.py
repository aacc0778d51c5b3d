"""Training shortcuts must not change what is learned: the same loss and gradients as the plain path."""

import pytest
import torch

from instructemo.config import load_config
from instructemo.data import load_split
from instructemo.models import load_causal_lm, load_tokenizer
from instructemo.prompts import PromptBuilder, load_template
from instructemo.train import LeftPadCollator, _build_trainer, _shared_prompt_length
from conftest import build_tiny_causal_lm
from test_end_to_end import tiny_config


def test_shared_prompt_length_keeps_the_answer_predicting_position():
    rows = [{"input_ids": [1, 2, 3, 4, 9], "labels": [-100, -100, -100, -100, 9]},
            {"input_ids": [1, 2, 3, 5, 9], "labels": [-100, -100, -100, -100, 9]}]
    assert _shared_prompt_length(rows) == 3
    same = [rows[0], dict(rows[0])]  # identical rows: stop before the position that predicts the answer
    assert _shared_prompt_length(same) == 3
    batch = LeftPadCollator(0, share_prefix=True)(rows)
    assert batch["prefix_ids"].tolist() == [[1, 2, 3]]
    assert batch["input_ids"].tolist() == [[4, 9], [5, 9]]
    assert batch["position_ids"].tolist() == [[3, 4], [3, 4]]


@pytest.mark.parametrize("model_type,attention", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")])
def test_shared_prefix_gives_the_same_loss_and_gradients(tmp_path, emotion_dir, model_type, attention):
    model_dir = build_tiny_causal_lm(tmp_path / model_type, model_type)
    cfg = load_config(tiny_config(tmp_path, model_dir, emotion_dir, bf16=False))
    tokenizer = load_tokenizer(str(model_dir))
    split = load_split(cfg.dataset, cfg.dataset_dir)
    builder = PromptBuilder(tokenizer, load_template(cfg.template, split.template), split.label_space, cfg.cutoff_len)
    examples = [builder.training_example(r) for r in split.records]
    model = load_causal_lm(str(model_dir), flash_attn=attention, bf16=False)
    trainer = _build_trainer(cfg, model, tokenizer, examples, bf16=False)
    rows = [trainer.train_dataset[i] for i in range(len(examples))]
    # Rows of different lengths, so the rests are padded in the middle of the sequence.
    assert len({len(r["input_ids"]) for r in rows}) > 1

    def loss_and_grads(share: bool):
        batch = LeftPadCollator(tokenizer.pad_token_id, share_prefix=share)(rows)
        assert ("prefix_ids" in batch) == share
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    plain_loss, plain = loss_and_grads(False)
    shared_loss, shared = loss_and_grads(True)
    torch.testing.assert_close(shared_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert plain and plain.keys() == shared.keys()
    for name in plain:
        torch.testing.assert_close(shared[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_cpu_training_picks_eager_attention_and_inference_sdpa():
    from instructemo.models import pick_attention

    if torch.cuda.is_available():
        pytest.skip("the CPU choice")
    assert pick_attention("auto", training=True) == "eager"
    assert pick_attention("auto") == "sdpa"
    assert pick_attention("sdpa", training=True) == "sdpa"


def test_length_grouped_batches_come_in_shuffled_order():
    from instructemo.train import _epoch_seeded_sampler

    lengths = [int(x) for x in torch.randint(5, 200, (800,), generator=torch.Generator().manual_seed(1))]
    sampler = _epoch_seeded_sampler(16, lengths, seed=3)
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
