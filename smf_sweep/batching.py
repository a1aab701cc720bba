"""Examples → tokenised, padded micro-batches, in a seeded order that depends only on
(seed, epoch), so a resumed run sees exactly the batches it would have seen."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from .data.formats import medmcqa_answer_index, medmcqa_explanation, medmcqa_prompt, medmcqa_target


@dataclass(frozen=True)
class Example:
    prompt: str        # masked from the loss when loss_on == "answer"
    completion: str    # always in the loss


def medmcqa_examples(rows: Iterable[Mapping]) -> list[Example]:
    """The study's training text (SMF_SPEC §6): prompt ending "Answer:", then " X. {option}" and
    "\\nExplanation: {exp}" when present. Answer-only loss = loss on the completion."""
    out = []
    for r in rows:
        exp = medmcqa_explanation(r)
        out.append(Example(medmcqa_prompt(r), medmcqa_target(r, medmcqa_answer_index(r))
                           + (f"\nExplanation: {exp}" if exp else "")))
    return out


def text_examples(texts: Iterable[str]) -> list[Example]:
    """Plain text (retrofit data): every token in the loss."""
    return [Example("", t) for t in texts]


class Batcher:
    """Tokenises once; `micro_batch(k)` is the k-th micro-batch of this rank (k counts across epochs).

    An epoch is a seeded permutation of the examples cut into optimizer steps of `effective_batch`
    examples (the tail that does not fill one is dropped). Each step is `accumulation` micro-batches
    of `micro_batch_size` on each of the w ranks; rank r takes every w-th micro-batch slot. So the
    examples of optimizer step s, and their order, are the same for any worker count."""

    def __init__(self, examples: list[Example], tokenizer, *, micro_batch_size: int, max_len: int,
                 effective_batch: int | None = None, loss_on: str = "all", append_eos: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if loss_on not in ("all", "answer"):
            raise ValueError(f"loss_on must be 'all' or 'answer', got {loss_on!r}")
        if not examples:
            raise ValueError("no training examples")
        E = effective_batch or micro_batch_size * world_size
        if E % (micro_batch_size * world_size):
            raise ValueError(f"effective_batch {E} is not a multiple of micro_batch_size {micro_batch_size} "
                             f"× {world_size} workers")
        self.mbs, self.seed, self.rank, self.world = micro_batch_size, seed, rank, world_size
        self.pad_id = tokenizer.pad_token_id
        eos = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
        self.encoded: list[tuple[list[int], int]] = []              # (ids, first loss position)
        for ex in examples:
            p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"] if ex.prompt else []
            ids = tokenizer(ex.prompt + ex.completion, add_special_tokens=False)["input_ids"] + eos
            start = len(p) if loss_on == "answer" else 0
            self.encoded.append((ids[:max_len], min(start, max_len)))
        self.steps_per_epoch = len(self.encoded) // E                  # optimizer steps per epoch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(examples)} examples do not fill one optimizer step of {E} examples")
        self.per_epoch = self.steps_per_epoch * (E // (micro_batch_size * world_size))   # micro-batches per rank
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self.encoded), generator=g)}   # keep one epoch
        return self._orders[epoch]

    def micro_batch(self, k: int) -> dict[str, torch.Tensor]:
        epoch, j = divmod(k, self.per_epoch)
        order = self._order(epoch)
        first = (j * self.world + self.rank) * self.mbs
        # interleave ranks per micro-batch: rank r takes slots [first, first + mbs)
        idx = order[first: first + self.mbs].tolist()
        return self.collate([self.encoded[i] for i in idx])

    def collate(self, items: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        T = max(len(ids) for ids, _ in items)
        B = len(items)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)      # (B, T), right padded
        attention = torch.zeros((B, T), dtype=torch.long)                 # (B, T)
        labels = torch.full((B, T), -100, dtype=torch.long)               # (B, T): -100 = not in loss
        for b, (ids, start) in enumerate(items):
            n = len(ids)
            input_ids[b, :n] = torch.tensor(ids)
            attention[b, :n] = 1
            labels[b, start:n] = input_ids[b, start:n]
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
