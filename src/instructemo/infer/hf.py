"""Batched generation with transformers."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from instructemo.infer.loading import load_causal_run
from instructemo.models.batching import (
    additive_mask,
    common_prefix_length,
    encode_prefix,
    longest_first,
    packed_batches,
    repeat_cache,
)
from instructemo.models.chat import answer_tokens, prompt_text, prompt_token_ids, stop_token_ids, until_stop

log = logging.getLogger(__name__)


class HFEngine:
    """transformers: batched greedy generation, and label scoring with shared prompt caches."""

    def __init__(self, cfg, model, tokenizer, progress: bool = True, fixed_weights: bool = False):
        """An engine over a model in memory: a loaded run (`load`), or the one being trained (checkpoint selection).

        fixed_weights: the weights will not change, so the prompt prefix encoded by one call serves the next.
        """
        self.cfg, self.model, self.tokenizer, self.progress = cfg, model, tokenizer, progress
        self.prefix = SharedPrefix() if fixed_weights else None

    @classmethod
    def load(cls, cfg, base_path: str, adapter: Path | None, bf16: bool, device: torch.device) -> "HFEngine":
        model, tokenizer = load_causal_run(
            base_path,
            adapter,
            device=device,
            flash_attn=cfg.flash_attn,
            bf16=bf16,
            trust_remote_code=cfg.trust_remote_code,
            allow_pickle=cfg.allow_pickle_weights,
        )
        return cls(cfg, model, tokenizer, fixed_weights=True)

    unfinished = 0  # answers of the last generate() that max_new_tokens cut before the model ended its turn

    def generate(self, conversations: list[list[dict]]) -> list[str]:
        cfg = self.cfg
        answers, stops = generate_ids(
            self.model,
            self.tokenizer,
            conversations,
            batch_size=cfg.per_device_eval_batch_size,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.do_sample,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=cfg.seed,
            progress=self.progress,
        )
        self.unfinished = sum(not ids or ids[-1] not in stops for ids in answers)
        return decode_answers(self.tokenizer, answers, stops)

    def score(self, conversations: list[list[dict]], answers: list[str]):
        return score_answers(
            self.model,
            self.tokenizer,
            conversations,
            answers,
            batch_size=self.cfg.per_device_eval_batch_size,
            progress=self.progress,
            prefix=self.prefix,
        )

    def score_tokens(self, contexts: list[list[int]], continuations: list[list[int]]):
        return score_continuations(
            self.model,
            contexts,
            continuations,
            batch_size=self.cfg.per_device_eval_batch_size,
            pad_id=self.tokenizer.pad_token_id,
            progress=self.progress,
            prefix=self.prefix,
        )


def decode_answers(tokenizer, answers: list[list[int]], stops: list[int]) -> list[str]:
    """The answers' text. The stop token is cut first: a turn end the tokenizer does not mark special would stay in it."""
    kept = [ids[:-1] if ids and ids[-1] in stops else ids for ids in answers]
    return [text.strip() for text in tokenizer.batch_decode(kept, skip_special_tokens=True)]


@torch.inference_mode()
def generate_ids(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    batch_size: int,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[list[int]], list[int]]:
    """The token ids of each answer through its stop token (the turn end, or eos), in input order; and the stops."""
    tokenizer.padding_side = "left"
    prompts = [prompt_text(tokenizer, c) for c in conversations]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    stop_ids = stop_token_ids(tokenizer, model.generation_config)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    if do_sample:
        torch.manual_seed(seed)
    answers: list[list[int]] = [[] for _ in prompts]
    model.eval()
    with tqdm(total=len(prompts), desc="generating", unit="ex", disable=not progress) as bar:
        for chunk in longest_first(lengths, batch_size):
            batch = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(model.device)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
                top_k=None,
                **sampling,
            )
            for i, row in zip(chunk, output[:, batch["input_ids"].shape[1] :].tolist()):
                answers[i] = until_stop(row, stop_ids)  # finished rows are padded to the batch's longest
            bar.update(len(chunk))
    return answers, stop_ids


def score_answers(
    model,
    tokenizer,
    conversations: list[list[dict]],
    answers: list[str],
    *,
    batch_size: int,
    progress: bool = True,
    prefix: SharedPrefix | None = None,
) -> torch.Tensor:
    """Log-likelihood of each answer (through end-of-turn) after each prompt: a (prompts x answers) tensor."""
    tokens = prompt_token_ids(tokenizer, conversations)
    continuations = [answer_tokens(tokenizer, conversations[0], a) for a in answers]
    return score_continuations(
        model,
        tokens,
        continuations,
        batch_size=batch_size,
        pad_id=tokenizer.pad_token_id,
        progress=progress,
        prefix=prefix,
    )


@torch.inference_mode()
def score_continuations(
    model,
    contexts: list[list[int]],
    continuations: list[list[int]],
    *,
    batch_size: int,
    pad_id: int,
    progress: bool = True,
    prefix: SharedPrefix | None = None,
) -> torch.Tensor:
    """Log-likelihood of each continuation after each context (token ids): a (contexts x continuations) tensor.

    Work is shared three ways. The prefix common to all contexts (system
    prompt and instruction) is encoded once for the whole call, or once for
    all calls with `prefix` (a model whose weights do not change). Each context
    then runs once for all continuations: its own tokens are followed by every
    continuation's tokens, and an attention mask lets each continuation see
    the context and its own earlier tokens only (a tree), so one forward pass
    scores every label. And contexts are packed side by side in the rows
    (`packed_batches`), so short texts fill the room beside long ones instead
    of padding.
    """
    tree = AnswerTree(continuations)
    model.eval()  # before the prefix is encoded: no dropout in the cache every row reuses
    prefix_len, prefix_cache = (prefix or SharedPrefix()).encoded(model, contexts)
    rests = [c[prefix_len:] for c in contexts]
    scores = torch.zeros(len(contexts), len(continuations))
    bar = tqdm(total=len(contexts), desc="scoring", unit="ex", disable=not progress)
    with _attention_that_takes_a_mask(model), bar:
        for rows in packed_batches([len(r) + tree.width for r in rests], batch_size):
            chunk = [i for row in rows for i in row]
            packed = [[rests[i] for i in row] for row in rows]
            scores[chunk] = _score_packed(model, packed, prefix_len, prefix_cache, tree, pad_id)
            bar.update(len(chunk))
    return scores


class SharedPrefix:
    """The prompt prefix that every context so far has started with, and its keys and values.

    Within one call it is the prefix the call's contexts share. Kept across
    calls (`HFEngine.load`), it settles on the system prompt and instruction
    of the template after a call or two, and a server that classifies a few
    texts per call stops encoding them every time (for one text, the whole
    prompt but its last token). Only for weights that no longer change: the
    keys and values would outlive an update.

    Safe for calls from several threads (a server, the web UI's Try): the ids
    and their cache are one pair, read once and replaced whole, only after the
    new cache is built; the cache itself is never written to (each call
    repeats a copy).
    """

    def __init__(self):
        self._kept: tuple[list[int], object] = ([], None)

    @property
    def ids(self) -> list[int]:
        return self._kept[0]

    def encoded(self, model, contexts: list[list[int]]) -> tuple[int, object]:
        """(prefix length, its cache) for these contexts, encoding a new prefix only where the kept one does not fit."""
        length = common_prefix_length(contexts)
        first = contexts[0][:length]
        ids, cache = self._kept  # one read: another thread may replace the pair meanwhile, never half of it
        if cache is not None and len(ids) <= length and first[: len(ids)] == ids:
            return len(ids), cache
        if cache is not None:
            length = next((i for i, (a, b) in enumerate(zip(ids, first)) if a != b), min(len(ids), length))
        if length == 0:
            return 0, None
        ids = first[:length]
        cache = encode_prefix(model, torch.tensor([ids], device=model.device))
        self._kept = (ids, cache)
        return length, cache


class AnswerTree:
    """Every answer's tokens side by side after a prompt, with who may attend to whom.

    Each answer feeds all but its last token: the prompt's last position
    predicts an answer's first token, and its fed tokens predict the rest.
    """

    def __init__(self, continuations: list[list[int]]):
        self.continuations = continuations
        fed = [c[:-1] for c in continuations]
        self.width = sum(len(f) for f in fed)
        self.input_ids = torch.tensor([t for f in fed for t in f], dtype=torch.long)
        self.depth = torch.tensor([d for f in fed for d in range(1, len(f) + 1)], dtype=torch.long)
        owner = torch.tensor([k for k, f in enumerate(fed) for _ in f], dtype=torch.long)
        later = torch.arange(self.width)
        self.visible = (owner[:, None] == owner[None, :]) & (later[None, :] <= later[:, None])
        # Where each answer token's log-probability is read, in a window that starts
        # at the prompt's last position: (answer, token) -> (window column, token id).
        self.columns, self.targets, self.answer_of = [], [], []
        offset = 0
        for k, c in enumerate(continuations):
            for j, token in enumerate(c):
                self.columns.append(0 if j == 0 else offset + j)
                self.targets.append(token)
                self.answer_of.append(k)
            offset += len(c) - 1
        self.columns, self.targets, self.answer_of = map(torch.tensor, (self.columns, self.targets, self.answer_of))

    def segment_mask(self, prompt_length: int) -> torch.Tensor:
        """Who may attend to whom among a prompt's own tokens followed by the answers' (square, bool)."""
        n, size = prompt_length, prompt_length + self.width
        mask = torch.zeros((size, size), dtype=torch.bool)
        mask[:n, :n] = torch.ones((n, n), dtype=torch.bool).tril()
        mask[n:, :n] = True
        mask[n:, n:] = self.visible
        return mask


def _score_packed(
    model, rows: list[list[list[int]]], prefix_len: int, prefix_cache, tree: AnswerTree, pad_id: int
) -> torch.Tensor:
    """Scores of the prompts packed in `rows` (rows of prompts, each a prompt's tokens after the shared prefix),
    in row order: a (prompts x answers) tensor.

    A row holds its prompts side by side, each followed by every answer's
    tokens, then padding. Every token sees the shared prefix; a prompt's tokens
    see its own earlier tokens, its answer tokens see the prompt and their own
    answer's earlier tokens (the tree); nothing sees another prompt, and
    position ids restart after the prefix for each prompt, so each is scored
    exactly as it would be alone. Padding sees itself, so no softmax row is empty.
    """
    answers = tree.width
    width = max(sum(len(rest) + answers for rest in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.full((len(rows), width), prefix_len, dtype=torch.long)
    allowed = torch.zeros((len(rows), width, prefix_len + width), dtype=torch.bool)
    allowed[:, :, :prefix_len] = True
    allowed[:, :, prefix_len:] = torch.eye(width, dtype=torch.bool)
    last_positions = []  # (row, column) of each prompt's last token: its logits predict every answer's first token
    for r, row in enumerate(rows):
        start = 0
        for rest in row:
            n = len(rest)
            end = start + n + answers
            input_ids[r, start : start + n] = torch.as_tensor(rest)
            input_ids[r, start + n : end] = tree.input_ids
            positions[r, start : start + n] = prefix_len + torch.arange(n)
            positions[r, start + n : end] = prefix_len + n - 1 + tree.depth
            allowed[r, start:end, prefix_len + start : prefix_len + end] = tree.segment_mask(n)
            last_positions.append((r, start + n - 1))
            start = end
    # Each prompt's window: its last token, then its answer tokens (the columns AnswerTree reads).
    window = torch.arange(answers + 1)
    read_rows = torch.tensor([r for r, _ in last_positions])[:, None].expand(-1, answers + 1)
    read_columns = torch.tensor([c for _, c in last_positions])[:, None] + window
    device = model.device
    cache = repeat_cache(prefix_cache, len(rows)) if prefix_cache is not None else None
    with _lm_head_only_at(model, read_rows.flatten().to(device), read_columns.flatten().to(device)):
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=additive_mask(allowed, model.dtype).to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=prefix_cache is not None,
            logits_to_keep=0,
        ).logits
    if logits.shape[:2] != (1, read_rows.numel()):
        raise RuntimeError(f"{type(model).__name__} does not run its LM head as its output embeddings module")
    logits = logits.view(len(last_positions), answers + 1, -1).float()
    columns, targets = tree.columns.to(device), tree.targets.to(device)
    logprobs = (logits[:, columns, targets] - logits.logsumexp(-1)[:, columns]).cpu()
    return torch.zeros(len(last_positions), len(tree.continuations)).index_add_(1, tree.answer_of, logprobs)


@contextlib.contextmanager
def _lm_head_only_at(model, rows: torch.Tensor, columns: torch.Tensor):
    """The LM head runs at these (row, column) positions only: the forward's logits are (1, positions, vocab).

    The rest of the forward is the model's own (its final norm before the
    head, any logit softcapping after), so these are the logits it would give
    there; only the vocabulary projection at every other position is spared.
    """

    def gather(module, args):
        return (args[0][rows, columns][None], *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _attention_that_takes_a_mask(model):
    """Scoring passes its own 4D attention mask, which FlashAttention-2 cannot take: use SDPA meanwhile."""
    implementation = model.config._attn_implementation
    if not implementation.startswith("flash"):
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(implementation)
