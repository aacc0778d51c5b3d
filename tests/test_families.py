"""Conformance across the model families users fine-tune: Llama-3 (instruct and base), Gemma 2 and 3, Mistral,
Qwen2.5 and ChatML.

Each family gets a tiny model of its architecture and a word-level tokenizer
with its real special tokens and its real chat template (tests/chat_templates/).
Their eos tokens are set as the hub's tokenizers set them, and the generation
config lists the eos token alone: the turn end (`<|eot_id|>`, `<end_of_turn>`)
must then come from the template, as it does for a user whose model ships an
older generation config. For each family: the prompt as rendered, the
completion-only loss mask token by token, where generation stops, parsing, and
single- and multi-label score mode against a brute-force forward pass whose
answer tokens are worked out here from the family's own turn end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import EMOTION_ROWS, write_emotion_txt
from helpers.cli import run_cli, tiny_config
from helpers.families import FAMILIES, IDS, Family, build_model


@pytest.fixture(scope="module", params=FAMILIES, ids=IDS)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def loaded(family, tmp_path_factory):
    """(family, model dir, the tokenizer as instructemo loads it) for one family."""
    from instructemo.models.load import load_tokenizer

    directory = build_model(family, tmp_path_factory.mktemp(family.name.replace(".", "")))
    return family, directory, load_tokenizer(str(directory))


def conversation(text="hello"):
    return [{"role": "user", "content": text}]


def expected_answer_ids(family: Family, tokenizer, answer: str) -> list[int]:
    """The answer's tokens through the family's turn end, worked out from the rendered text, not by instructemo."""
    prompt = tokenizer.apply_chat_template(conversation(), add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(conversation() + [{"role": "assistant", "content": answer}], tokenize=False)
    cut = full.index(family.turn_end, len(prompt)) + len(family.turn_end)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full[:cut], add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    return ids[len(prompt_ids) :]


def test_prompt_rendering(loaded):
    """Our prompts carry no system turn (Gemma 2 refuses one); the family's own defaults (Qwen's system prompt) stay."""
    from instructemo.data.labels import LabelSpace
    from instructemo.models.chat import prompt_text
    from instructemo.prompts.builder import PromptBuilder, load_template

    family, _, tokenizer = loaded
    assert prompt_text(tokenizer, conversation()) == family.prompt
    space = LabelSpace(("sadness", "joy"), multi_label=False)
    messages = PromptBuilder(tokenizer, load_template("single_label", "single_label"), space, 256).prompt(
        "i feel happy"
    )
    assert [m["role"] for m in messages] == ["user"]
    prompt_text(tokenizer, messages)  # renders without the template raising


def test_turn_end_and_stop_tokens(loaded):
    from transformers import GenerationConfig

    from instructemo.models.chat import answer_tokens, stop_token_ids, turn_end_id

    family, directory, tokenizer = loaded
    turn_end = tokenizer.convert_tokens_to_ids(family.turn_end)
    assert turn_end_id(tokenizer) == turn_end
    assert turn_end in stop_token_ids(tokenizer, GenerationConfig.from_pretrained(directory))
    for answer in ("joy", "anger, fear"):
        assert answer_tokens(tokenizer, conversation(), answer) == expected_answer_ids(family, tokenizer, answer)


def test_loss_mask_token_by_token(loaded, tmp_path):
    """trl's completion-only labels: every prompt token masked, the answer and its turn end trained."""
    from instructemo.config.schema import load_config
    from instructemo.models.load import load_causal_lm
    from instructemo.train.trainer import build_sft_trainer

    family, directory, tokenizer = loaded
    cfg = load_config(tiny_config(tmp_path, directory, tmp_path, finetuning_type="full", bf16=False), [])
    examples = [
        {"prompt": conversation(), "completion": [{"role": "assistant", "content": a}]} for a in ("joy", "anger, fear")
    ]
    model = load_causal_lm(str(directory), flash_attn="auto", bf16=False, training=True)
    trainer = build_sft_trainer(cfg, model, tokenizer, examples, bf16=False)
    prompt_ids = tokenizer(family.prompt, add_special_tokens=False)["input_ids"]
    for row, example in zip(trainer.train_dataset, examples):
        answer = expected_answer_ids(family, tokenizer, example["completion"][0]["content"])
        assert row["input_ids"][: len(prompt_ids)] == prompt_ids  # one bos, not two
        assert row["labels"][: len(prompt_ids)] == [-100] * len(prompt_ids)
        trained = row["labels"][len(prompt_ids) :]
        assert trained[: len(answer)] == answer  # the answer and the turn end, nothing of the prompt
        assert -100 not in trained
        # after the turn end, only what the template writes there ("\n" for ChatML and Gemma)
        assert len(trained) - len(answer) <= 1


@pytest.fixture(scope="module")
def trained(loaded, tmp_path_factory):
    """The family's tiny model fully fine-tuned on the tiny emotion set through `instructemo sft`."""
    family, directory, _ = loaded
    root = tmp_path_factory.mktemp(f"trained-{family.name.replace('.', '')}")
    data = root / "data"
    write_emotion_txt(data / "emotion" / "train.txt", EMOTION_ROWS * 4)
    write_emotion_txt(data / "emotion" / "test.txt")
    config = tiny_config(
        root,
        directory,
        data,
        finetuning_type="full",
        learning_rate=5e-3,
        num_train_epochs=8,
        bf16=False,
        max_new_tokens=6,
        cutoff_len=128,
    )
    assert run_cli("sft", config) == 0
    return family, root / "run", config


@pytest.mark.slow
def test_generation_stops_at_the_turn_end(trained):
    """Each answer ends at the family's turn end: never the tokens the model would write after it."""
    from transformers import AutoModelForCausalLM

    from instructemo.infer.hf import decode_answers, generate_ids
    from instructemo.models.load import load_tokenizer

    family, run, _ = trained
    tokenizer = load_tokenizer(str(run))
    model = AutoModelForCausalLM.from_pretrained(run).eval()
    texts = [conversation(f"classify : {t}") for t, _ in EMOTION_ROWS[:6]]
    turn_end = tokenizer.convert_tokens_to_ids(family.turn_end)
    answers, stops = generate_ids(model, tokenizer, texts, batch_size=4, max_new_tokens=6, progress=False)
    for ids in answers:
        assert ids[-1] == turn_end and turn_end not in ids[:-1], tokenizer.convert_ids_to_tokens(ids)
    texts_out = decode_answers(tokenizer, answers, stops)
    assert texts_out == [tokenizer.decode(ids[:-1], skip_special_tokens=True).strip() for ids in answers]


def test_parsing_and_single_label_score_mode(trained):
    """Generate and score through the CLI; score mode's probabilities against a brute-force forward pass."""
    from transformers import AutoModelForCausalLM

    from instructemo.models.load import load_tokenizer

    family, run, config = trained
    assert run_cli("generate-eval", config, f"eval_output_dir={run / 'generate'}") == 0
    rows = [json.loads(line) for line in (run / "generate" / "predictions.jsonl").read_text().splitlines()]
    assert sum(r["predicted"] is not None for r in rows) >= len(rows) // 2  # it answers with labels, and they parse
    for r in rows:
        assert family.turn_end not in r["generation"]
    assert run_cli("generate-eval", config, "mode=score", f"eval_output_dir={run / 'score'}") == 0
    scored = [json.loads(line) for line in (run / "score" / "predictions.jsonl").read_text().splitlines()]
    tokenizer = load_tokenizer(str(run))
    model = AutoModelForCausalLM.from_pretrained(run).eval()
    names = list(scored[0]["probabilities"])
    for row in scored[:3]:
        conv = prompt_of(config, row["text"], tokenizer)
        loglik = np.array(
            [brute_force(model, tokenizer, conv, expected_answer_ids(family, tokenizer, n)) for n in names]
        )
        expected = np.exp(loglik - loglik.max())
        expected /= expected.sum()
        assert [row["probabilities"][n] for n in names] == pytest.approx(expected.tolist(), abs=1e-4)


def prompt_of(config, text, tokenizer):
    from instructemo.config.schema import load_config
    from instructemo.data.datasets import resolve_label_space
    from instructemo.prompts.builder import PromptBuilder, load_template

    cfg = load_config(config, [])
    space, template = resolve_label_space(cfg.dataset, cfg.dataset_dir)
    return PromptBuilder(tokenizer, load_template(cfg.template, template), space, cfg.cutoff_len).prompt(text)


def brute_force(model, tokenizer, conv, answer_ids) -> float:
    """log P(answer_ids | prompt) from one plain forward pass over prompt + answer."""
    prompt = tokenizer(
        tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False), add_special_tokens=False
    )["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([prompt + answer_ids])).logits[0].float().log_softmax(-1)
    return sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(answer_ids))


def test_multi_label_score_mode_scores_the_next_label(loaded):
    """P(label k next | the greedy labels before it), over the later labels and the end of the answer:
    a label candidate is its name without the turn end, the end candidate closes the turn."""
    from transformers import AutoModelForCausalLM

    from instructemo.data.labels import LabelSpace
    from instructemo.infer.hf import score_continuations
    from instructemo.infer.multilabel import label_probabilities

    family, directory, tokenizer = loaded
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    space = LabelSpace(("joy", "fear", "sadness", "anger"), multi_label=True)
    prompts = [conversation(f"labels for : {t}") for t in ("i feel happy and scared", "so sad", "wow")]
    greedy = ["joy, sadness", "sadness", "not a label at all"]

    class FixedAnswers:
        def __init__(self):
            self.tokenizer = tokenizer

        def generate(self, conversations):
            return greedy

        def score_tokens(self, contexts, continuations):
            return score_continuations(model, contexts, continuations, batch_size=2, pad_id=tokenizer.pad_token_id)

    probabilities, _ = label_probabilities(FixedAnswers(), prompts, space)
    turn_end = tokenizer.convert_tokens_to_ids(family.turn_end)
    for row, labels in enumerate([("joy", "sadness"), ("sadness",), ()]):
        for k, name in enumerate(space.names):
            before = tuple(l for l in labels if space.names.index(l) < k)
            last = space.names.index(before[-1]) if before else -1
            options = {}
            for later in space.names[last + 1 :]:
                ids = expected_answer_ids(family, tokenizer, space.answer(before + (later,)))
                assert ids[-1] == turn_end
                options[later] = brute_force(model, tokenizer, prompts[row], ids[:-1])
            options["<end>"] = brute_force(
                model, tokenizer, prompts[row], expected_answer_ids(family, tokenizer, space.answer(before))
            )
            expected = np.exp(options[name]) / sum(np.exp(v) for v in options.values()) if name in options else 0.0
            assert probabilities[row, k] == pytest.approx(expected, abs=1e-4), (row, name)


def _embedded_tokenizer(alias: str):
    """The real tokenizer of an embedded GGUF model, read from the GGUF file alone (no weights dequantized)."""
    from transformers import AutoTokenizer

    from instructemo.errors import UserError
    from instructemo.models.chat import fallback_template
    from instructemo.models.load import ALIASES

    try:
        gguf = ALIASES[alias]()
    except UserError as exc:
        pytest.skip(str(exc))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tokenizer.chat_template is None:
        _, tokenizer.chat_template = fallback_template(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("alias, turn_end", [("smollm2-135m-instruct", "<|im_end|>"), ("gemma3-270m", "<end_of_turn>")])
def test_embedded_models_real_tokenizers(alias, turn_end, tmp_path):
    """With real BPE vocabularies the answer's tokens are the ones trl trains, through the turn end."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from instructemo.config.schema import load_config
    from instructemo.models.chat import answer_tokens, prompt_text, turn_end_id
    from instructemo.train.trainer import build_sft_trainer

    tokenizer = _embedded_tokenizer(alias)
    assert turn_end_id(tokenizer) == tokenizer.convert_tokens_to_ids(turn_end)
    conv = conversation("i feel a little nervous about tomorrow")
    assert prompt_text(tokenizer, conv).endswith(
        "<|im_start|>assistant\n" if "im_end" in turn_end else "<start_of_turn>model\n"
    )
    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
    )
    cfg = load_config(tiny_config(tmp_path, tmp_path, tmp_path, finetuning_type="full", bf16=False), [])
    answers = ("fear", "anger, fear, sadness", "none")
    examples = [{"prompt": conv, "completion": [{"role": "assistant", "content": a}]} for a in answers]
    trainer = build_sft_trainer(cfg, AutoModelForCausalLM.from_config(config), tokenizer, examples, bf16=False)
    for row, answer in zip(trainer.train_dataset, answers):
        trained = [t for t in row["labels"] if t != -100]
        ids = answer_tokens(tokenizer, conv, answer)
        assert trained[: len(ids)] == ids and ids[-1] == turn_end_id(tokenizer)
        assert tokenizer.decode(ids[:-1]).strip() == answer
