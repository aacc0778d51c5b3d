"""Log-likelihoods the slow, obvious way (one plain forward pass per answer), to check the fast paths against."""

import numpy as np
import torch

from instructemo.models.chat import answer_tokens


def brute_force_token_loglik(model, tokenizer, conversation, answer_ids):
    """log P(answer_ids | prompt) from one plain forward pass over prompt + answer."""
    prompt = tokenizer(
        tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([prompt + answer_ids])).logits[0].float().log_softmax(-1)
    return sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(answer_ids))


def brute_force_loglik(model, tokenizer, conversation, answer):
    return brute_force_token_loglik(model, tokenizer, conversation, answer_tokens(tokenizer, conversation, answer))


def brute_force_scores(model, tokenizer, conversations, answers) -> np.ndarray:
    """(conversations x answers) log-likelihoods, each from its own plain forward pass."""
    return np.array([[brute_force_loglik(model, tokenizer, c, a) for a in answers] for c in conversations])
