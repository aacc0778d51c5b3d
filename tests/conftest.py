"""Shared fixtures: a tiny Llama and tokenizer built in process, and small data files.

Nothing here touches the network.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from instructemo.data.readers import shared_data_dir
from instructemo.models.load import bf16_supported

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

EMOTION_ROWS = [
    ("i feel so happy and cheerful today", "joy"),
    ("what a wonderful sunny day i am glad", "joy"),
    ("i am sad and lonely tonight", "sadness"),
    ("i cried all day feeling miserable", "sadness"),
    ("i am furious about the broken promise", "anger"),
    ("this makes me so mad and irritated", "anger"),
    ("i am scared of the dark house", "fear"),
    ("i feel terrified and nervous", "fear"),
    ("i adore my sweet partner", "love"),
    ("i cherish every moment with you", "love"),
    ("i was shocked by the sudden news", "surprise"),
    ("wow i did not expect that at all", "surprise"),
]


# A small multi-label dataset: label sets of zero, one and two labels.
MULTI_LABEL_ROWS = [
    ("i feel happy and scared", ["joy", "fear"]),
    ("so sad", ["sadness"]),
    ("here", []),
    ("happy happy", ["joy"]),
    ("scared and sad", ["fear", "sadness"]),
    ("ok", []),
]

# Figures that depend on the dtype are tested in both, whatever `bf16: auto` picks on this host: float32 always,
# bfloat16 where the host computes it natively (elsewhere torch emulates it, hundreds of times slower).
BOTH_DTYPES = pytest.mark.parametrize(
    "bf16",
    [
        pytest.param(False, id="fp32"),
        pytest.param(
            True, id="bf16", marks=pytest.mark.skipif(not bf16_supported(), reason="this host has no native bfloat16")
        ),
    ],
)


def write_emotion_txt(path: Path, rows=EMOTION_ROWS, header: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["text;label_name"] if header else []) + [f"{t};{l}" for t, l in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The team's real datasets; tests using it skip cleanly where they are absent."""
    path = shared_data_dir()
    if not (path / "emotion" / "train.txt").is_file():
        pytest.skip(f"shared datasets not found at {path}")
    return path


def tiny_tokenizer(
    specials=("<unk>", "<|im_start|>", "<|im_end|>", "<pad>"),
    *,
    bos="<|im_start|>",
    eos="<|im_end|>",
    pad="<pad>",
    extra_words="",
):
    """A word-level tokenizer over the test texts, labels and templates: (tokenizer, vocab).

    `specials` come first and are special tokens (a model family's turn markers);
    bos, eos and pad name three of them.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from instructemo.prompts.builder import TEMPLATE_DIR

    specials = list(dict.fromkeys(["<unk>", *specials]))
    corpus = " ".join([t for t, _ in EMOTION_ROWS] + [l for _, l in EMOTION_ROWS])
    corpus += (
        " user assistant system none "
        + extra_words
        + " "
        + " ".join(p.read_text() for p in TEMPLATE_DIR.glob("*.jinja"))
    )
    words = sorted(set(re.findall(r"\w+|[^\w\s]", corpus.lower())))
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    named = {bos, eos, pad, "<unk>"}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token=eos,
        pad_token=pad,
        bos_token=bos,
        additional_special_tokens=[t for t in specials if t not in named],
    )
    return tokenizer, vocab


def build_tiny_encoder(directory: Path, model_type: str = "bert", hidden_size: int = 32, extra_words: str = "") -> Path:
    """A 2-layer randomly initialised encoder (bert, distilbert, roberta) with the word-level tokenizer
    (`extra_words`: more words it knows)."""
    import torch
    from transformers import AutoConfig, AutoModel

    tokenizer, vocab = tiny_tokenizer(extra_words=extra_words)
    sizes = {"distilbert": dict(dim=hidden_size, n_layers=2, n_heads=4, hidden_dim=2 * hidden_size)}.get(
        model_type,
        dict(hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * hidden_size),
    )
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(vocab), max_position_embeddings=520, pad_token_id=vocab["<pad>"], **sizes
    )
    AutoModel.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_causal_lm(directory: Path, model_type: str = "llama", hidden_size: int = 32, heads: int = 4) -> Path:
    """A 2-layer randomly initialised decoder (llama, mistral, qwen2, gemma3_text, ...) with a
    word-level tokenizer and a ChatML template."""
    tokenizer, vocab = tiny_tokenizer()
    tokenizer.chat_template = CHATML
    return save_tiny_causal_lm(
        directory, tokenizer, len(vocab), model_type, hidden_size, heads, ("<|im_start|>", "<|im_end|>", "<pad>")
    )


def save_tiny_causal_lm(
    directory: Path, tokenizer, vocab_size: int, model_type: str, hidden_size: int, heads: int, bos_eos_pad
) -> Path:
    """A 2-layer random decoder of `model_type` for `tokenizer`, saved with it; bos, eos and pad name its tokens.
    Generation stops at the eos alone: a turn's end must come from the chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    bos, eos, pad = (tokenizer.convert_tokens_to_ids(token) for token in bos_eos_pad)
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=hidden_size // heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


build_tiny_llama = build_tiny_causal_lm


def pickled_copy(model_dir: Path, target: Path) -> Path:
    """The model folder with its safetensors weights re-saved as a pickled pytorch_model.bin only."""
    import torch
    from safetensors.torch import load_file

    target.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.suffix != ".safetensors":
            (target / item.name).write_bytes(item.read_bytes())
    torch.save(load_file(model_dir / "model.safetensors"), target / "pytorch_model.bin")
    return target


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def emotion_dir(tmp_path) -> Path:
    """A dataset_dir holding a tiny emotion dataset in the registry's layout."""
    write_emotion_txt(tmp_path / "emotion" / "train.txt")
    write_emotion_txt(tmp_path / "emotion" / "test.txt", EMOTION_ROWS[::2])
    write_emotion_txt(tmp_path / "emotion" / "val.txt", EMOTION_ROWS[1::2])
    return tmp_path


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, for a server a test starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(server, url: str, seconds: int = 300) -> None:
    """Until GET url/health answers 200; fails with the server's output if it exits or never comes up."""
    import time

    import httpx

    deadline = time.time() + seconds
    while True:
        if server.poll() is not None:
            output = server.stdout or server.stderr
            pytest.fail(f"the server exited: {output.read()[-3000:] if output else ''}")
        if time.time() > deadline:
            pytest.fail("the server did not start")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
