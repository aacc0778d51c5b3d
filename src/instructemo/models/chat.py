"""The chat template's contract with training and inference: the answer's tokens and the token that ends a turn.

Model families end the assistant's turn differently: ChatML with `<|im_end|>`,
Llama-3-Instruct with `<|eot_id|>`, Gemma with `<end_of_turn>`, Mistral with
its eos `</s>`. The turn end is often not `tokenizer.eos_token`, so everything
that must stop where the model's answer stops (generation, label scoring, the
answer's tokens) asks this module instead of the eos token.
"""

from __future__ import annotations

# Tokenizers that ship no chat template (base models) get one that their own
# vocabulary can write. A template built from turn markers the vocabulary
# lacks would end each answer in several ordinary tokens, which no stop token
# can catch; so only a family whose markers are single tokens gets them.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma's own format (as Gemma 3 ships it): a system message opens the first user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Any other vocabulary: ChatML's layout as plain text, the answer closed by the eos token.
PLAIN_TEMPLATE = (
    "{{ bos_token or '' }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FALLBACK_TEMPLATES = (  # (name, markers that must each be one special token, template)
    ("Gemma's", ("<start_of_turn>", "<end_of_turn>"), GEMMA_TEMPLATE),
    ("ChatML", ("<|im_start|>", "<|im_end|>"), CHATML_TEMPLATE),
)
# The answer a probe conversation renders, to find what the template writes after an answer.
_PROBE = [{"role": "user", "content": "x"}]
_PROBE_ANSWER = "y"


def fallback_template(tokenizer) -> tuple[str, str]:
    """(name, chat template) for a tokenizer that has none: its family's, when its vocabulary has the markers."""
    special = _special_tokens(tokenizer)
    for name, markers, template in FALLBACK_TEMPLATES:
        if all(m in special for m in markers):
            return name, template
    return "plain ChatML text ended by eos", PLAIN_TEMPLATE


def _special_tokens(tokenizer) -> set[str]:
    added = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return added | set(tokenizer.all_special_tokens)


def _special_ids(tokenizer) -> set[int]:
    return {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} | set(tokenizer.all_special_ids)


def turn_end_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant's answer, if any.

    `<|im_end|>` for ChatML, `<|eot_id|>` for Llama-3, `<end_of_turn>` for
    Gemma, `</s>` for Mistral; None when the template writes no special token
    there (the model then has no way to say it is done).
    """
    prompt = tokenizer.apply_chat_template(_PROBE, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(_PROBE + [{"role": "assistant", "content": _PROBE_ANSWER}], tokenize=False)
    at = full.find(_PROBE_ANSWER, len(prompt))
    if not full.startswith(prompt) or at < 0:
        return None
    after = full[at + len(_PROBE_ANSWER) :].lstrip(" ")
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return ids[0] if ids and ids[0] in _special_ids(tokenizer) else None


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every token that ends the model's answer: the template's turn end, the eos token and the
    generation config's eos ids (Llama-3-Instruct lists both of its ends there)."""
    ids = {tokenizer.eos_token_id, turn_end_id(tokenizer)}
    if generation_config is not None:
        ids.update(_as_list(generation_config.eos_token_id))
    return sorted(ids - {None})


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def until_stop(ids: list[int], stops) -> list[int]:
    """`ids` through the first stop token (kept), or all of them."""
    for position, token in enumerate(ids):
        if token in stops:
            return list(ids[: position + 1])
    return list(ids)


def prompt_text(tokenizer, conversation: list[dict]) -> str:
    return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def prompt_token_ids(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    """Each conversation through the chat template up to the assistant's turn, as token ids."""
    prompts = [prompt_text(tokenizer, c) for c in conversations]
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


def answer_tokens(tokenizer, conversation: list[dict], answer: str) -> list[int]:
    """The tokens training puts after the prompt for `answer`, through the end of the turn.

    As trl does for completion-only loss, the whole conversation is tokenized
    and the prompt's tokens are taken off its front, so the answer's tokens
    are the ones the model learned (a tokenizer may merge across the border:
    tokenizing the answer on its own could give others).
    """
    prompt = prompt_text(tokenizer, conversation)
    full = tokenizer.apply_chat_template(conversation + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the answer turn differently from the generation prompt")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids:
        ids = full_ids[len(prompt_ids) :]
    else:  # the tokenizer merged the prompt's last token with the answer's first
        ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return until_stop(ids, set(stop_token_ids(tokenizer)))
