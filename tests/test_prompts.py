import pytest
from transformers import AutoTokenizer

from instructemo.data.labels import LabelSpace
from instructemo.data.records import Record
from instructemo.errors import UserError
from instructemo.prompts.builder import PromptBuilder, builtin_templates, load_template, render_user_turn

EMOTION = LabelSpace(("sadness", "joy", "love", "anger", "fear", "surprise"))
SEMEVAL = LabelSpace(("anger", "disgust", "trust"), multi_label=True, none_word="none")


def test_builtin_templates():
    assert {"single_label", "multi_label", "sentiment"} <= set(builtin_templates())


def test_single_label_prompt_lists_labels_and_text():
    text = render_user_turn(load_template("single_label", "x"), "  i feel great  ", EMOTION)
    assert "sadness, joy, love, anger, fear, surprise" in text
    assert text.endswith("Text: i feel great")


def test_multi_label_prompt_names_the_none_word():
    text = render_user_turn(load_template("auto", "multi_label"), "meh", SEMEVAL)
    assert "anger, disgust, trust" in text and "answer none" in text


def test_sentiment_prompt():
    text = render_user_turn(load_template("sentiment", "x"), "great film", LabelSpace(("negative", "positive")))
    assert "negative or positive" in text


def test_answers_are_canonical():
    assert SEMEVAL.answer(["trust", "anger", "trust"]) == "anger, trust"
    assert SEMEVAL.answer([]) == "none"
    assert EMOTION.answer(["joy"]) == "joy"


def test_user_template_file(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("Labels: {{ labels | join('/') }} -- {{ text }}")
    assert (
        render_user_turn(load_template(str(path), "x"), "hi", EMOTION)
        == "Labels: sadness/joy/love/anger/fear/surprise -- hi"
    )


def test_template_errors(tmp_path):
    with pytest.raises(UserError, match="template 'nope' not found"):
        load_template("nope", "x")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% if %}")
    with pytest.raises(UserError, match="bad.jinja:1"):
        load_template(str(bad), "x")
    unknown = tmp_path / "unknown.jinja"
    unknown.write_text("{{ txt }}")
    with pytest.raises(UserError, match="unknown variable"):
        render_user_turn(load_template(str(unknown), "x"), "hi", EMOTION)


def test_long_texts_are_cut_but_the_answer_survives(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    builder = PromptBuilder(tokenizer, load_template("single_label", "x"), EMOTION, cutoff_len=64)
    record = Record("happy " * 500, ("joy",), None, "t:1")
    example = builder.training_example(record)
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True, return_dict=False)
    assert len(full) <= 64
    assert example["completion"][0]["content"] == "joy"
    assert builder.truncated == 1


def test_cutoff_too_small_for_the_prompt(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(UserError, match="cutoff_len=16 leaves no room"):
        PromptBuilder(tokenizer, load_template("single_label", "x"), EMOTION, cutoff_len=16)
