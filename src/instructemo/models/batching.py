"""Batches of token rows, and the forward passes that share work across a batch.

Both training and score-mode inference pad on the left, encode the prompt
prefix every row shares once, and pass their own 4D attention masks; the pieces
they share live here, so the two cannot drift apart:

- `longest_first` orders rows so that similar lengths share a batch, and
  `packed_batches` fills the room that short rows leave beside long ones;
- `left_padded`, `positions_after` and `additive_mask` build padded rows whose
  position ids skip the padding, so each row is computed as it would be alone;
- `encode_prefix` / `repeat_cache` hold the shared prefix's keys and values;
- `LeftPadCollator` and the forwards below are the training side (shared
  prefix, or packed rows), and `shuffled_length_groups` its batch order.
"""

from __future__ import annotations

import copy

import torch


def longest_first(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length, longest first: little compute goes to padding, and running out
    of memory happens at once if at all."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def packed_batches(sizes: list[int], rows: int) -> list[list[list[int]]]:
    """Items packed side by side into rows, and the rows into batches of at most `rows` rows: batch -> row -> items.

    Rows are as wide as the longest item. Items go longest first to the first
    row with room for them (first fit decreasing), so short items fill the room
    beside long ones and beside each other instead of padding: in a handful of
    random texts (a server's batch) one long text no longer pads every row to
    its length. Batches take the fullest rows first, each as wide as its
    fullest row, so the first batch is the largest and running out of memory
    happens at once if at all. A batch holds at most 2 * `rows` items, which
    bounds what is kept per item (the LM head's logits) to twice a padded batch.
    """
    width, most = max(sizes), 2 * rows
    packed: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        slot = next((r for r, free in enumerate(room) if free >= sizes[i] and len(packed[r]) < most), None)
        if slot is None:
            packed.append([])
            room.append(width)
            slot = len(packed) - 1
        packed[slot].append(i)
        room[slot] -= sizes[i]
    packed.sort(key=lambda row: -sum(sizes[i] for i in row))
    batches: list[list[list[int]]] = [[]]
    for row in packed:
        if batches[-1] and (len(batches[-1]) == rows or sum(map(len, batches[-1])) + len(row) > most):
            batches.append([])
        batches[-1].append(row)
    return batches


def common_prefix_length(token_lists: list[list[int]]) -> int:
    """How many leading tokens every list shares; each list keeps at least one token of its own."""
    shortest = min(len(t) for t in token_lists)
    first = token_lists[0]
    for i in range(shortest - 1):
        if any(t[i] != first[i] for t in token_lists):
            return i
    return shortest - 1


def left_padded(rows: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows x width tensor with each row right-aligned after `fill`, bool mask of the real positions)."""
    width = max(len(r) for r in rows)
    values = torch.full((len(rows), width), fill, dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            values[i, width - len(row) :] = torch.as_tensor(row)
            real[i, width - len(row) :] = True
    return values, real


def positions_after(real: torch.Tensor, offset: int) -> torch.Tensor:
    """Position ids of left-padded rows that continue after `offset` shared tokens; padding takes the first."""
    return offset + (real.long().cumsum(-1) - 1).clamp(min=0)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A (rows, queries, keys) bool mask as the additive 4D mask models take: 0 where allowed, the dtype's min elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )[:, None]


def encode_prefix(model, prefix_ids: torch.Tensor, rows: int = 1):
    """The shared prefix's keys and values, computed once and repeated for `rows` rows (with gradients when training:
    backward sums the rows' gradients into them)."""
    cache = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1).past_key_values
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return cache


def repeat_cache(cache, rows: int):
    """A copy of a one-row cache for `rows` rows; the model appends to the copy, so the original serves every batch."""
    repeated = copy.deepcopy(cache)
    repeated.batch_repeat_interleave(rows)
    return repeated


class LeftPadCollator:
    """Pads on the left, so every answer ends at the last position of its row.

    With the answers aligned, the LM head only needs the last few positions
    (see trainer.AnswerOnlySFTTrainer). Position ids skip the padding, so each
    row is computed exactly as it would be alone.

    With `share_prefix`, the tokens every row of the batch starts with (the
    system prompt and the instruction: most of a short prompt) are taken out
    and returned once as `prefix_ids`; the trainer encodes them once for the
    batch and the rows continue from there.

    With `pack` (and share_prefix), what is left of the rows is packed instead
    (see `_pack`).
    """

    def __init__(self, pad_token_id: int, share_prefix: bool = False, pack: bool = False):
        self.pad_token_id = pad_token_id
        self.share_prefix = share_prefix
        self.pack = pack and share_prefix

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        prefix_len = shared_prompt_length(examples) if self.share_prefix else 0
        rows = [(e["input_ids"][prefix_len:], e["labels"][prefix_len:]) for e in examples]
        if self.pack:
            return self._pack(examples, rows, prefix_len)
        input_ids, real = left_padded([ids for ids, _ in rows], self.pad_token_id)
        labels, _ = left_padded([targets for _, targets in rows], -100)
        batch = {
            "input_ids": input_ids,
            "attention_mask": real.long(),
            "position_ids": positions_after(real, prefix_len),
            "labels": labels,
        }
        if prefix_len:
            batch["prefix_ids"] = torch.as_tensor(examples[0]["input_ids"][:prefix_len])[None]
        if "weight" in examples[0]:
            batch["weights"] = torch.tensor([e["weight"] for e in examples], dtype=torch.float32)
        return batch

    def _pack(self, examples: list[dict], rows: list[tuple], prefix_len: int) -> dict[str, torch.Tensor]:
        """The rows after the shared prefix, packed side by side into as few rows as the longest one needs.

        In a batch in random order, one long text pads every row to its
        length; packed, the short rows fill the space instead. `segments`
        numbers the rows that share a packed row (0 is padding), so each
        attends to the prefix and to itself only (`packed_attention_mask`),
        and position ids restart after the prefix for each: every token is
        computed as in its own row, for the same loss and gradients.
        """
        width = max(len(ids) for ids, _ in rows)
        bins: list[list[int]] = []  # first fit, longest rows first
        room: list[int] = []
        for i in sorted(range(len(rows)), key=lambda i: -len(rows[i][0])):
            size = len(rows[i][0])
            slot = next((b for b, free in enumerate(room) if free >= size), None)
            if slot is None:
                bins.append([])
                room.append(width)
                slot = len(bins) - 1
            bins[slot].append(i)
            room[slot] -= size
        shape = (len(bins), width)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, -100, dtype=torch.long)
        position_ids = torch.full(shape, prefix_len, dtype=torch.long)
        segments = torch.zeros(shape, dtype=torch.long)
        weights = torch.zeros(shape, dtype=torch.float32)
        for b, members in enumerate(bins):
            start = 0
            for n, i in enumerate(members, start=1):
                ids, targets = rows[i]
                span = slice(start, start + len(ids))
                input_ids[b, span] = torch.as_tensor(ids)
                labels[b, span] = torch.as_tensor(targets)
                position_ids[b, span] = prefix_len + torch.arange(len(ids))
                segments[b, span] = n
                weights[b, span] = examples[i].get("weight", 1.0)
                start += len(ids)
        batch = {"input_ids": input_ids, "position_ids": position_ids, "segments": segments, "labels": labels}
        if prefix_len:
            batch["prefix_ids"] = torch.as_tensor(examples[0]["input_ids"][:prefix_len])[None]
        if "weight" in examples[0]:
            batch["token_weights"] = weights
        return batch


def shared_prompt_length(examples: list[dict]) -> int:
    """How many leading tokens all rows share, stopping before the position that predicts any answer token."""
    first_target = min(next((i for i, t in enumerate(e["labels"]) if t != -100), len(e["labels"])) for e in examples)
    tokens = [e["input_ids"] for e in examples]
    # The position that predicts the first answer token must stay in each row, so its logits are computed.
    return min(common_prefix_length(tokens), max(first_target - 1, 0))


def packed_attention_mask(segments: torch.Tensor, prefix_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4D mask (rows, 1, width, prefix + width): every token sees the prefix and its own row's earlier tokens.

    A padding position sees itself only, so no softmax row is empty.
    """
    width = segments.shape[1]
    device = segments.device
    causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
    own = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0) & causal
    own |= torch.eye(width, dtype=torch.bool, device=device)
    prefix = torch.ones((segments.shape[0], width, prefix_len), dtype=torch.bool, device=device)
    return additive_mask(torch.cat([prefix, own], dim=2), dtype)


def packed_forward(model, inputs: dict, labels: torch.Tensor):
    """A packed batch's forward pass: (outputs, target columns), with logits only where a row predicts an answer token.

    The LM head runs at the columns where any packed row predicts an answer
    token; logits column k predicts labels[:, target_columns[k]] (-100 where
    that row has no answer token there).
    """
    segments = inputs.pop("segments")
    prefix_ids = inputs.pop("prefix_ids", None)
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != -100  # logits at position t predict token t + 1
    columns = predicts.any(dim=0).nonzero().squeeze(1)
    cache = encode_prefix(model, prefix_ids, segments.shape[0]) if prefix_ids is not None else None
    prefix_len = prefix_ids.shape[1] if prefix_ids is not None else 0
    outputs = model(
        input_ids=inputs["input_ids"],
        position_ids=inputs["position_ids"],
        attention_mask=packed_attention_mask(segments, prefix_len, model.dtype),
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=columns,
    )
    return outputs, columns + 1


def forward_after_shared_prefix(model, prefix_ids: torch.Tensor, inputs: dict, logits_to_keep: int):
    """The batch's forward pass with its shared prefix encoded once: the same logits, with gradients, as the whole rows."""
    batch = inputs["input_ids"].shape[0]
    cache = encode_prefix(model, prefix_ids, batch)
    prefix_mask = torch.ones(
        (batch, prefix_ids.shape[1]), dtype=inputs["attention_mask"].dtype, device=prefix_ids.device
    )
    return model(
        input_ids=inputs["input_ids"],
        position_ids=inputs["position_ids"],
        attention_mask=torch.cat([prefix_mask, inputs["attention_mask"]], dim=1),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )


def epoch_seeded_sampler(batch_size: int, lengths: list[int], seed: int):
    """Length-grouped batches, in shuffled order, drawn from (seed, epoch) alone.

    transformers' LengthGroupedSampler sorts each mega-batch (50 batches) by
    length and yields its batches longest to shortest, so training walks from
    long texts to short ones every 50 steps and the last, low-learning-rate
    steps see only the shortest texts. Here the batches keep their similar
    lengths (little padding) but come in random order; the longest stays first,
    so running out of memory happens at once if at all.

    It also draws each epoch's order from the running RNG, which a resumed run
    restores as it was at the checkpoint, not at the epoch's start: the
    interrupted epoch would then be replayed in another order. Seeding by
    epoch replays it exactly.
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self):
            super().__init__(batch_size, lengths=lengths)
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            self.generator = torch.Generator().manual_seed(seed + self.epoch)
            indices = list(super().__iter__())
            batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
            order = [0, *(1 + torch.randperm(len(batches) - 1, generator=self.generator)).tolist()] if batches else []
            return iter([i for b in order for i in batches[b]])

    return EpochSeededLengthGroupedSampler()


def shuffled_length_groups(trainer, train_dataset=None):
    """A Trainer's _get_train_sampler, with transformers' length-grouped sampler swapped for epoch_seeded_sampler."""
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler = Trainer._get_train_sampler(trainer, train_dataset)
    if isinstance(sampler, LengthGroupedSampler):
        return epoch_seeded_sampler(sampler.batch_size, sampler.lengths, trainer.args.data_seed or trainer.args.seed)
    return sampler
