"""The model families the tests build: their chat templates, special tokens and eos settings as the hub ships them,
and a tiny random model of each architecture (test_families, test_vllm)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from conftest import save_tiny_causal_lm, tiny_tokenizer

TEMPLATES = Path(__file__).parents[1] / "chat_templates"
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    specials: tuple[str, ...]
    bos: str
    eos: str
    pad: str
    turn_end: str  # what the template writes after the assistant's answer
    template: str | None  # a file in tests/chat_templates, or None: the tokenizer ships none (a base model)
    prompt: str  # the prompt for the user turn "hello", as the family renders it
    extra_words: str = ""

    def tokenizer(self):
        tokenizer, _ = tiny_tokenizer(
            self.specials, bos=self.bos, eos=self.eos, pad=self.pad, extra_words=self.extra_words + " hello"
        )
        if self.template:
            tokenizer.chat_template = (TEMPLATES / self.template).read_text().rstrip("\n")
        return tokenizer


LLAMA3 = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|reserved_special_token_0|>",
)
GEMMA = ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>")
FAMILIES = [
    Family(
        "chatml",
        "llama",
        ("<|im_start|>", "<|im_end|>", "<pad>"),
        "<|im_start|>",
        "<|im_end|>",
        "<pad>",
        "<|im_end|>",
        "smollm2.jinja",
        f"<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
        SMOLLM_SYSTEM,
    ),
    # A base model without a template whose vocabulary has the ChatML markers gets ChatML.
    Family(
        "chatml-base",
        "llama",
        ("<|im_start|>", "<|im_end|>", "<pad>"),
        "<|im_start|>",
        "<|im_end|>",
        "<pad>",
        "<|im_end|>",
        None,
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    ),
    Family(
        "llama3-instruct",
        "llama",
        LLAMA3,
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|eot_id|>",
        "llama3_instruct.jinja",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    # No template: a base model. Its vocabulary has no ChatML markers, so the answer ends with its eos token.
    Family(
        "llama3-base",
        "llama",
        LLAMA3,
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|end_of_text|>",
        None,
        "<|begin_of_text|><|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    ),
    Family(
        "gemma2",
        "gemma2",
        GEMMA,
        "<bos>",
        "<eos>",
        "<pad>",
        "<end_of_turn>",
        "gemma2.jinja",
        "<bos><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
        "model",
    ),
    Family(
        "gemma3",
        "gemma3_text",
        GEMMA,
        "<bos>",
        "<eos>",
        "<pad>",
        "<end_of_turn>",
        "gemma3.jinja",
        "<bos><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
        "model",
    ),
    # A Gemma base model without a template gets Gemma's own: its vocabulary has the turn markers.
    Family(
        "gemma3-base",
        "gemma3_text",
        GEMMA,
        "<bos>",
        "<eos>",
        "<pad>",
        "<end_of_turn>",
        None,
        "<bos><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
        "model",
    ),
    Family(
        "mistral",
        "mistral",
        ("<s>", "</s>", "[INST]", "[/INST]", "<pad>"),
        "<s>",
        "</s>",
        "<pad>",
        "</s>",
        "mistral.jinja",
        "<s> [INST] hello [/INST]",
    ),
    # Architecture llama: AutoTokenizer loads a qwen2 model's tokenizer as Qwen2Tokenizer, which rebuilds it
    # byte-level and would break this word-level vocabulary (Qwen2's own layers run in test_dense.py).
    Family(
        "qwen2.5",
        "llama",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|im_end|>",
        "qwen2_5.jinja",
        f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
        QWEN_SYSTEM,
    ),
]
IDS = [f.name for f in FAMILIES]
HIDDEN = 64  # Gemma's head_dim of 16 at 4 heads is fine on CPU; the test is about tokens, not size


def build_model(family: Family, directory: Path, hidden: int = HIDDEN, heads: int = 4) -> Path:
    """A 2-layer random model of the family's architecture, saved with the family's tokenizer."""
    tokenizer = family.tokenizer()
    return save_tiny_causal_lm(
        directory, tokenizer, len(tokenizer), family.model_type, hidden, heads, (family.bos, family.eos, family.pad)
    )
