"""Memory access counts per batch, and background statistics over general text.

    with AccessRecorder(model) as rec:
        model(**batch)
        counts = rec.counts(batch["attention_mask"])     # {layer_idx: (N,) long}

    bg = compute_background(model, batches)               # one eval-mode, no-grad pass
    bg.save(ckpt_dir / BACKGROUND_FILE); bg = BackgroundStats.load(...); bg.check(model)

c(i) = number of (token, head, top-k position) accesses of slot i, unweighted by scores. Padding
positions (attention_mask == 0) are not counted unless count_padding=True (QWEN's behaviour).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from .insert import memory_config, memory_layers

BACKGROUND_FILE = "memory_background.pt"  # the file name beside a checkpoint
FORMAT = 1  # version of the background file layout


def count_accesses(idx: torch.Tensor, n_slots: int, attention_mask: torch.Tensor | None = None,
                   count_padding: bool = False) -> torch.Tensor:
    """idx (B, T, H, k) slot indices, attention_mask (B, T) -> counts (N,) long.

    A scatter-add of 0/1 weights (not boolean indexing, not bincount, whose output sizes depend on
    the data): no host sync on an accelerator; integer adds, so exact in any order."""
    w = torch.ones_like(idx)                                                     # (B, T, H, k)
    if attention_mask is not None and not count_padding:
        if attention_mask.shape != idx.shape[:2]:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match indices {tuple(idx.shape)}")
        w = w * attention_mask.to(idx.device, torch.long)[:, :, None, None]      # pads weigh 0
    return torch.zeros(n_slots, dtype=torch.long, device=idx.device).scatter_add_(0, idx.reshape(-1), w.reshape(-1))


class AccessRecorder:
    """Forward hooks on every memory layer's addressing; keeps the indices of the last forward.

    Each layer's last forward overwrites its record (a recompute under activation checkpointing
    re-records the same indices); `counts` consumes the records. Indices are detached long
    tensors, so no autograd graph is kept alive.
    """

    def __init__(self, model: nn.Module, count_padding: bool | None = None):
        ws = memory_layers(model)
        if not ws:
            raise ValueError("model has no memory layers")
        self.count_padding = memory_config(model).count_padding if count_padding is None else count_padding
        self.n_slots = {w.layer_idx: w.memory.n_slots for w in ws}
        self._idx: dict[int, torch.Tensor] = {}
        self._handles = [w.memory.address.register_forward_hook(self._hook(w.layer_idx)) for w in ws]

    def _hook(self, layer: int):
        def record(module, args, out):
            self._idx[layer] = out[1].detach()  # (B, T, H, k)
        return record

    def indices(self) -> dict[int, torch.Tensor]:
        """{layer_idx: (B, T, H, k)} of the last forward (not consumed)."""
        return dict(self._idx)

    def counts(self, attention_mask: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """{layer_idx: counts (N,) long} of the last forward; consumes the records."""
        missing = set(self.n_slots) - set(self._idx)
        if missing:
            raise RuntimeError(f"no forward recorded for memory layers {sorted(missing)} since the last counts()")
        out = {i: count_accesses(self._idx[i], n, attention_mask, self.count_padding) for i, n in self.n_slots.items()}
        self._idx.clear()
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._idx.clear()

    def __enter__(self) -> "AccessRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def addressing_fingerprint(model: nn.Module) -> str:
    """sha256 of what decides which slots a token reads: layer indices, sizes, keys, query net."""
    h = hashlib.sha256()
    for w in memory_layers(model):
        a = w.memory.address
        h.update(f"{w.layer_idx}:{a.heads}:{a.n_keys}:{a.d_k}:{a.k};".encode())
        for name, t in sorted(a.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class StaleBackground(ValueError):
    """Background statistics computed with different addressing than the model's."""


@dataclass(frozen=True)
class LayerBackground:
    """One layer's background: df (N,) batches touching each slot, total (N,) accesses, n batches."""

    df: torch.Tensor
    total: torch.Tensor
    n: int


@dataclass
class BackgroundStats:
    df: dict[int, torch.Tensor]  # {layer: (N,) long} number of batches touching slot i
    total: dict[int, torch.Tensor]  # {layer: (N,) long} C(i), accesses summed over batches
    n: int = 0  # number of batches
    fingerprint: str = ""  # addressing_fingerprint of the model they were computed on
    count_padding: bool = False  # how accesses were counted
    meta: dict = field(default_factory=dict)  # free-form provenance (data source, batch size)

    @classmethod
    def empty(cls, model: nn.Module, count_padding: bool = False) -> "BackgroundStats":
        ws = memory_layers(model)
        dev = ws[0].memory.values.device
        zeros = {w.layer_idx: torch.zeros(w.memory.n_slots, dtype=torch.long, device=dev) for w in ws}
        return cls({i: z.clone() for i, z in zeros.items()}, zeros, 0, addressing_fingerprint(model), count_padding)

    def update(self, counts: Mapping[int, torch.Tensor]) -> None:
        """Add one batch's counts {layer: (N,)}."""
        if set(counts) != set(self.df):
            raise ValueError(f"counts for layers {sorted(counts)}, expected {sorted(self.df)}")
        for i, c in counts.items():
            self.df[i] += (c > 0).to(self.df[i].device, torch.long)
            self.total[i] += c.to(self.total[i].device, torch.long)
        self.n += 1

    def layer(self, i: int) -> LayerBackground:
        return LayerBackground(self.df[i], self.total[i], self.n)

    def to(self, device) -> "BackgroundStats":
        mv = lambda d: {i: t.to(device) for i, t in d.items()}  # noqa: E731
        return BackgroundStats(mv(self.df), mv(self.total), self.n, self.fingerprint, self.count_padding, dict(self.meta))

    def check(self, model: nn.Module) -> None:
        """Raise StaleBackground unless these stats were computed on the model's current addressing."""
        fp = addressing_fingerprint(model)
        if fp != self.fingerprint:
            raise StaleBackground(f"background fingerprint {self.fingerprint[:12]} != model addressing {fp[:12]}: recompute it")

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        cpu = lambda d: {i: t.cpu() for i, t in d.items()}  # noqa: E731
        torch.save({"format": FORMAT, "df": cpu(self.df), "total": cpu(self.total), "n": self.n,
                    "fingerprint": self.fingerprint, "count_padding": self.count_padding, "meta": self.meta}, path)

    @classmethod
    def load(cls, path: str | Path, map_location="cpu") -> "BackgroundStats":
        d = torch.load(path, map_location=map_location, weights_only=True)
        if d.get("format") != FORMAT:
            raise ValueError(f"{path}: background format {d.get('format')!r}, expected {FORMAT}")
        return cls(d["df"], d["total"], d["n"], d["fingerprint"], d["count_padding"], d["meta"])


@torch.no_grad()
def compute_background(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                       count_padding: bool | None = None, max_batches: int | None = None) -> BackgroundStats:
    """One eval-mode, no-grad pass over `batches` (dicts with input_ids and attention_mask).

    Runs the decoder only (`model.model`), skipping the LM head: counts do not need logits.
    `count_padding=None` takes the model's MemoryConfig.count_padding. Training mode is restored.
    """
    cp = memory_config(model).count_padding if count_padding is None else count_padding
    stats = BackgroundStats.empty(model, cp)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with AccessRecorder(model, cp) as rec:
            for b, batch in enumerate(batches):
                if max_batches is not None and b >= max_batches:
                    break
                ids = batch["input_ids"].to(dev)
                mask = batch.get("attention_mask")
                mask = None if mask is None else mask.to(dev)
                model.model(input_ids=ids, attention_mask=mask)
                stats.update(rec.counts(mask))
    finally:
        model.train(was_training)
    return stats
