"""export --format vllm-classify: what it writes, and the label spaces it refuses with a reason."""

import json

from helpers.cli import run_cli, tiny_config
from transformers import AutoTokenizer

from instructemo.config.schema import load_config
from instructemo.infer.classifier import Classifier
from instructemo.models.chat import prompt_text
from instructemo.prompts.builder import PromptBuilder


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps({"text": t, "labels": l}) + "\n" for t, l in rows))
    return path


def test_the_export_carries_the_label_tokens_and_the_runs_prompt(tmp_path, tiny_llama, emotion_dir):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=2)
    assert run_cli("sft", config) == 0
    assert run_cli("export", config, "--output", tmp_path / "out", "--format", "vllm-classify") == 0
    settings = json.loads((tmp_path / "out" / "config.json").read_text())
    names = ["sadness", "joy", "love", "anger", "fear", "surprise"]
    assert settings["classifier_from_token"] == names  # word-level tokenizer: each label is one token
    assert (
        settings["id2label"] == {str(i): n for i, n in enumerate(names)} and settings["method"] == "no_post_processing"
    )
    assert json.loads((tmp_path / "out" / "instructemo_export.json").read_text())["score_method"] == "first_token"
    # A chat of one user message renders, through the exported template, the prompt the run was trained on.
    classifier = Classifier(load_config(config, []))
    exported, original = AutoTokenizer.from_pretrained(tmp_path / "out"), AutoTokenizer.from_pretrained(tiny_llama)
    prompts = PromptBuilder(original, classifier.template, classifier.space, 96)
    for text in ["i feel so happy", "so {% raw %} sad\n  and {{ alone }}"]:
        expected = prompt_text(original, prompts.messages(text))
        assert exported.apply_chat_template([{"role": "user", "content": text}], tokenize=False) == expected
        chat = [{"role": "system", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": text}]}]
        assert exported.apply_chat_template(chat, tokenize=False) == expected  # the last user message is the text


def test_labels_that_start_with_the_same_token_are_refused_with_the_clash(tmp_path, tiny_llama, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [("so sad", "very sad"), ("so happy", "very happy"), ("ok", "calm")] * 3)
    config = tiny_config(tmp_path, tiny_llama, tmp_path, dataset=str(data), max_steps=1)
    assert run_cli("sft", config) == 0
    capsys.readouterr()
    assert run_cli("export", config, "--output", tmp_path / "out", "--format", "vllm-classify") == 2
    error = capsys.readouterr().err
    assert "very happy and very sad both start with" in error and "score_method: sequence" in error
    assert not (tmp_path / "out").exists()
    assert run_cli("generate-eval", config, "mode=score", "score_method=first_token") == 2  # the same rule
    assert run_cli("export", config, "--output", tmp_path / "out") == 0  # the plain merged model is fine


def test_a_multi_label_run_is_refused_for_vllm_classify(tmp_path, tiny_llama, capsys):
    data = write_jsonl(tmp_path / "ml.jsonl", [("happy and scared", ["joy", "fear"]), ("so sad", ["sadness"])] * 3)
    config = tiny_config(tmp_path, tiny_llama, tmp_path, dataset=str(data), max_steps=1)
    assert run_cli("sft", config) == 0
    assert run_cli("export", config, "--output", tmp_path / "out", "--format", "vllm-classify") == 2
    assert "single-label only" in capsys.readouterr().err and not (tmp_path / "out").exists()
