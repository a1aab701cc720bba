"""Examples → tokenised, padded micro-batches, in a seeded order that depends only on
(seed, epoch), so a resumed run sees exactly the batches it would have seen.

Tokenised sets are cached by content (tokenizer, texts, max_len, loss rule, EOS rule) and shared
by every trial of a sweep; batches are grouped by length within large shuffled chunks, so padding
wastes little compute while each epoch still sees every example once."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping

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


BatchOrder = Literal["length_grouped", "random"]
GROUP_STEPS = 64          # optimizer steps per length-sorted chunk: large enough to group well, small
                          # enough that long and short examples still meet throughout an epoch


class Batcher:
    """Tokenises once (or loads the sweep's cached tokens); `micro_batch(k)` is the k-th micro-batch
    of this rank (k counts across epochs).

    An epoch is a seeded permutation of the examples cut into optimizer steps of `effective_batch`
    examples (the tail that does not fill one is dropped). `order="length_grouped"` [ours] then sorts
    each chunk of GROUP_STEPS steps by length and shuffles the steps within the chunk (seeded), so a
    micro-batch holds examples of similar length (HF Trainer's group_by_length idea); "random" keeps
    the permutation (the study's HF Trainer default). Either way an epoch sees the same examples.
    Each step is `accumulation` micro-batches of `micro_batch_size` on each of the w ranks; rank r
    takes every w-th micro-batch slot. So the examples of optimizer step s are the same for any
    worker count."""

    def __init__(self, examples: list[Example], tokenizer, *, micro_batch_size: int, max_len: int,
                 effective_batch: int | None = None, loss_on: str = "all", append_eos: bool = False,
                 order: BatchOrder = "random", seed: int = 0, rank: int = 0, world_size: int = 1,
                 cache_dir: str | Path | None = None):
        if loss_on not in ("all", "answer"):
            raise ValueError(f"loss_on must be 'all' or 'answer', got {loss_on!r}")
        if order not in ("length_grouped", "random"):
            raise ValueError(f"order must be 'length_grouped' or 'random', got {order!r}")
        if not examples:
            raise ValueError("no training examples")
        E = effective_batch or micro_batch_size * world_size
        if E % (micro_batch_size * world_size):
            raise ValueError(f"effective_batch {E} is not a multiple of micro_batch_size {micro_batch_size} "
                             f"× {world_size} workers")
        self.mbs, self.E, self.seed, self.rank, self.world, self.order = (micro_batch_size, E, seed, rank,
                                                                          world_size, order)
        self.pad_id = tokenizer.pad_token_id
        self.encoded = encode(examples, tokenizer, max_len=max_len, loss_on=loss_on, append_eos=append_eos,
                              cache_dir=cache_dir)                   # [(ids, first loss position)]
        self.lengths = torch.tensor([len(ids) for ids, _ in self.encoded])   # (N,)
        self.steps_per_epoch = len(self.encoded) // E                  # optimizer steps per epoch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(examples)} examples do not fill one optimizer step of {E} examples")
        self.per_epoch = self.steps_per_epoch * (E // (micro_batch_size * world_size))   # micro-batches per rank
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        """(steps_per_epoch · E,) example indices of the epoch, step after step."""
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(len(self.encoded), generator=g)[: self.steps_per_epoch * self.E]
            if self.order == "length_grouped":
                order = self._group(order, g)
            self._orders = {epoch: order}   # keep one epoch
        return self._orders[epoch]

    def _group(self, order: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        out = []
        C = GROUP_STEPS * self.E
        for c in range(0, len(order), C):
            chunk = order[c: c + C]                                              # (≤ C,) a multiple of E
            chunk = chunk[torch.sort(self.lengths[chunk], descending=True, stable=True).indices]
            steps = chunk.view(-1, self.E)                                       # (S, E) similar lengths per row
            out.append(steps[torch.randperm(len(steps), generator=g)].reshape(-1))
        return torch.cat(out)

    def micro_batch(self, k: int) -> dict[str, torch.Tensor]:
        epoch, j = divmod(k, self.per_epoch)
        order = self._order(epoch)
        first = (j * self.world + self.rank) * self.mbs
        # interleave ranks per micro-batch: rank r takes slots [first, first + mbs)
        idx = order[first: first + self.mbs].tolist()
        return self.collate([self.encoded[i] for i in idx])

    def padding_ratio(self, epoch: int = 0) -> float:
        """Computed tokens / real tokens over one epoch's micro-batches (padded to their longest)."""
        order = self._order(epoch)
        L = self.lengths[order].view(-1, self.mbs)                               # (micro-batches, mbs)
        return float(L.max(dim=1).values.sum() * self.mbs) / float(L.sum())

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


def tokenizer_fingerprint(tokenizer) -> str:
    """Identity of a tokenizer's behaviour: its full serialisation when it is a fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(
        [type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer)], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tokenize(examples: list[Example], tokenizer, max_len: int, loss_on: str,
              append_eos: bool) -> list[tuple[list[int], int]]:
    eos = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
    prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=False)["input_ids"]
    full = tokenizer([ex.prompt + ex.completion for ex in examples], add_special_tokens=False)["input_ids"]
    out = []
    for ex, p, ids in zip(examples, prompts, full):
        start = len(p) if loss_on == "answer" and ex.prompt else 0
        ids = ids + eos
        out.append((ids[:max_len], min(start, max_len)))
    return out


def encode(examples: list[Example], tokenizer, *, max_len: int, loss_on: str = "all", append_eos: bool = False,
           cache_dir: str | Path | None = None) -> list[tuple[list[int], int]]:
    """[(token ids, first loss position)] per example; cached under `cache_dir/tokens/` by content,
    so the trials of a sweep tokenise each training set once (`None`: no cache)."""
    if cache_dir is None:
        return _tokenize(examples, tokenizer, max_len, loss_on, append_eos)
    from .cache import get_or_create

    h = hashlib.sha256(json.dumps([tokenizer_fingerprint(tokenizer), max_len, loss_on, append_eos]).encode())
    for ex in examples:
        h.update(ex.prompt.encode() + b"\x00" + ex.completion.encode() + b"\x01")

    def build(tmp: Path) -> None:
        enc = _tokenize(examples, tokenizer, max_len, loss_on, append_eos)
        torch.save({"ids": torch.tensor([t for ids, _ in enc for t in ids], dtype=torch.int32),
                    "lengths": torch.tensor([len(ids) for ids, _ in enc], dtype=torch.int64),
                    "starts": torch.tensor([s for _, s in enc], dtype=torch.int64)}, tmp)

    path = get_or_create(Path(cache_dir) / "tokens", f"{h.hexdigest()[:20]}.pt", build, file=True)
    st = torch.load(path, weights_only=True)
    ids = st["ids"].tolist()
    ends = torch.cumsum(st["lengths"], 0).tolist()
    return [(ids[e - n: e], s) for e, n, s in zip(ends, st["lengths"].tolist(), st["starts"].tolist())]
