"""Few-shot prompting: k examples per label from the training split, as earlier turns of the conversation."""

import json
from collections import Counter

import pytest
from conftest import EMOTION_ROWS
from helpers.cli import run_cli, tiny_config

from instructemo.data.labels import LabelSpace
from instructemo.data.records import Record
from instructemo.errors import UserError
from instructemo.prompts.shots import ShotPicker

SPACE = LabelSpace(("sadness", "joy", "love", "anger", "fear", "surprise"))
POOL = [Record(text, (label,), None, f"train.txt:{i + 2}") for i, (text, label) in enumerate(EMOTION_ROWS)]


def test_random_shots_are_k_per_label_the_same_for_every_text_and_shuffled():
    picker = ShotPicker(POOL, SPACE, k=2, selection="random", seed=1, retriever="unused")
    first, second = picker.for_texts(["one text", "another text"])
    assert first == second  # one draw: every prompt shares its opening turns (score mode encodes them once)
    assert Counter(r.labels[0] for r in first) == {n: 2 for n in SPACE.names}
    assert [r.labels[0] for r in first] != sorted((r.labels[0] for r in first), key=SPACE.names.index)
    again = ShotPicker(POOL, SPACE, k=2, selection="random", seed=1, retriever="unused").for_texts(["x"])[0]
    assert again == first  # the seed decides the draw
    one = ShotPicker(POOL, SPACE, k=1, selection="random", seed=1, retriever="unused").for_texts(["x"])[0]
    assert len(one) == 6 and set(one) <= set(POOL)


def test_similar_shots_are_the_nearest_of_each_label_nearest_last_never_the_text_itself():
    picker = ShotPicker(POOL, SPACE, k=1, selection="similar", seed=1, retriever="all-minilm-l6-v2")
    query = "the referee made me furious and mad"
    (shots,) = picker.for_texts([query])
    assert Counter(r.labels[0] for r in shots) == {n: 1 for n in SPACE.names}
    assert shots[-1].labels == ("anger",)  # the nearest, beside the question
    # a training text equal to the text being classified (a duplicate across splits) is never shown
    duplicate = "I am furious about the broken   promise"
    (shots,) = picker.for_texts([duplicate])
    assert "i am furious about the broken promise" not in [r.text for r in shots]
    assert [r.text for r in shots if r.labels == ("anger",)] == ["this makes me so mad and irritated"]


def test_the_prompt_shows_each_shot_as_a_question_and_its_answer(tiny_llama):
    from instructemo.models.load import load_tokenizer
    from instructemo.prompts.builder import PromptBuilder, load_template

    builder = PromptBuilder(load_tokenizer(str(tiny_llama)), load_template("single_label", "single_label"), SPACE, 256)
    turns = builder.prompt("i am fine", POOL[:2])
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant", "user"]
    assert POOL[0].text in turns[0]["content"] and turns[1]["content"] == "joy"
    assert turns[-1] == builder.prompt("i am fine")[0]
    assert builder.truncated == 0


def test_generate_eval_few_shot_records_its_examples_and_keeps_them_apart(tmp_path, tiny_llama, emotion_dir, capsys):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, few_shot=1, mode="score", cutoff_len=400)
    assert run_cli("generate-eval", config) == 0  # the base model, no training
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["prompting"]["few_shot"] == 1 and metrics["prompting"]["selection"] == "random"
    assert metrics["prompting"]["shots_from"]["origin"].endswith("train.txt")
    assert metrics["metrics"]["n"] == 6

    assert run_cli("generate-eval", config, "eval_dataset=emotion:train", "overwrite_output_dir=true") == 2
    assert "few_shot draws its examples from dataset emotion, the split being evaluated" in capsys.readouterr().err
    assert run_cli("sft", config) == 2
    assert "few_shot is for prompting a model without training" in capsys.readouterr().err


@pytest.mark.parametrize("selection", ["random", "similar"])
def test_few_shot_conversation_reaches_the_model(tmp_path, tiny_llama, emotion_dir, selection, monkeypatch):
    """The shots are in the prompts the engine gets, the text's own turn last."""
    from instructemo.config.schema import load_config
    from instructemo.infer import classifier as module

    seen = []
    real = module.classify
    monkeypatch.setattr(
        module, "classify", lambda cfg, engine, convs, *a: seen.extend(convs) or real(cfg, engine, convs, *a)
    )
    cfg = load_config(
        tiny_config(tmp_path, tiny_llama, emotion_dir, few_shot=1, few_shot_selection=selection, cutoff_len=400)
    )
    module.Classifier(cfg).load(progress=False).classify(["i am so scared of spiders"])
    (conversation,) = seen
    assert len(conversation) == 13 and "i am so scared of spiders" in conversation[-1]["content"]
    assert sorted(t["content"] for t in conversation[1:-1:2]) == sorted(SPACE.names)


def test_the_whole_few_shot_conversation_fits_in_cutoff_len(tiny_llama):
    """Each example's text was cut to the whole text budget, so k examples made a prompt k times too long (vLLM,
    whose max_model_len is cutoff_len + max_new_tokens, refused it)."""
    from instructemo.models.load import load_tokenizer
    from instructemo.prompts.builder import PromptBuilder, load_template

    tokenizer = load_tokenizer(str(tiny_llama))
    template = load_template("single_label", "single_label")
    long = " ".join(["i feel so happy and cheerful today"] * 30)
    shots = [Record(f"{long} {label}", (label,), None, f"train.txt:{i}") for i, label in enumerate(SPACE.names)]
    for cutoff_len in (350, 512):
        builder = PromptBuilder(tokenizer, template, SPACE, cutoff_len, examples=len(shots))
        for text in (long, "i am fine"):
            conversation = builder.prompt(text, shots) + [{"role": "assistant", "content": "surprise"}]
            length = len(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False))
            assert length <= cutoff_len
        assert "i am fine" in builder.prompt("i am fine", shots)[-1]["content"]  # a short text is never cut
    with pytest.raises(UserError, match="few_shot.s 6 examples .* do not fit in cutoff_len=120"):
        PromptBuilder(tokenizer, template, SPACE, 120, examples=len(shots))
