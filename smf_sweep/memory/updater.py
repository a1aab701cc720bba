"""SparseUpdater: the SMF pieces a training loop calls — counting, selection, gradient masking.

    values = freeze_for_sparse(model)
    opt = OPTIMIZERS["adamw"](values, lr=5e-4)
    upd = SparseUpdater(model, opt, selector="kl", top_t=512, granularity="micro", background=bg)
    for step in ...:
        for batch in micro_batches:
            loss = model(**batch).loss / len(micro_batches)
            upd.after_forward(batch["attention_mask"])   # count; 'micro': select + arm the grad mask
            loss.backward()                              # 'micro': value grads masked by a tensor hook
        rows = upd.before_step()                         # select ('step'), mask grads, opt.set_rows
        clip_grad_norm_(values, 1.0); opt.step(); sched.step(); opt.zero_grad()
    upd.close()

Granularity (SMF_SPEC §7.3):
- `micro` (QWEN): each micro-batch selects its own top-t rows from its own counts; its gradient
  is masked to them as it arrives; the step updates the union (≤ micro_batches·t rows).
- `step` (LIN): counts are summed over the step's micro-batches; one selection of ≤ t rows; the
  accumulated gradient is masked to it in `before_step`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .counting import AccessRecorder, BackgroundStats
from .insert import memory_config, value_params
from .selectors import SELECTORS, select_rows

GRANULARITIES = ("micro", "step")


class SparseUpdater:
    def __init__(self, model: nn.Module, optimizer, selector: str, top_t: int, granularity: str = "micro",
                 background: BackgroundStats | None = None, count_padding: bool | None = None,
                 generator: torch.Generator | None = None,
                 reduce_counts: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """count_padding=None takes the model's MemoryConfig. generator: needed by `random`.
        reduce_counts: e.g. an all-reduce over data-parallel workers, so that all pick the same rows."""
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if top_t < 1:
            raise ValueError(f"top_t must be >= 1, got {top_t}")
        self.select = SELECTORS[selector]
        self.selector, self.top_t, self.granularity = selector, top_t, granularity
        self.values = value_params(model)  # {layer: (N, v_dim)}
        if not self.values:
            raise ValueError("model has no memory layers")
        self.count_padding = memory_config(model).count_padding if count_padding is None else count_padding
        if selector in ("tfidf", "kl"):
            if background is None:
                raise ValueError(f"selector {selector!r} needs background statistics")
        if background is not None:
            background.check(model)
            if background.count_padding != self.count_padding:
                raise ValueError(f"background counted with count_padding={background.count_padding}, "
                                 f"training counts with {self.count_padding}")
            background = background.to(next(iter(self.values.values())).device)
        if selector == "random" and generator is None:
            raise ValueError("selector 'random' needs a seeded torch.Generator")
        self.background, self.generator, self.reduce = background, generator, reduce_counts
        self.optimizer = optimizer
        self.recorder = AccessRecorder(model, self.count_padding)
        self._accum: dict[int, torch.Tensor] = {}  # 'step': summed counts
        self._micro: dict[int, torch.Tensor] = {}  # 'micro': current micro-batch's rows (grad mask)
        self._union: dict[int, torch.Tensor] = {}  # 'micro': rows of the step so far
        self.last_rows: dict[int, torch.Tensor] = {}  # rows of the last step, {layer: bool (N,)}
        self.last_micro_rows: list[dict[int, torch.Tensor]] = []  # 'micro': last step's per-micro-batch rows
        self._micro_list: list[dict[int, torch.Tensor]] = []
        self._hooks = []
        if granularity == "micro":
            self._hooks = [p.register_hook(self._grad_mask(i)) for i, p in self.values.items()]

    def _grad_mask(self, layer: int):
        def mask(grad: torch.Tensor) -> torch.Tensor:  # grad (N, v_dim)
            rows = self._micro.get(layer)
            if rows is None:
                raise RuntimeError("value gradient without a selection: call after_forward() before backward()")
            return grad.masked_fill(~rows.unsqueeze(1), 0)
        return mask

    def _rows(self, layer: int, counts: torch.Tensor) -> torch.Tensor:
        bg = None if self.background is None else self.background.layer(layer)
        return select_rows(self.select(counts, bg, generator=self.generator), self.top_t)

    @torch.no_grad()
    def after_forward(self, attention_mask: torch.Tensor | None) -> dict[int, torch.Tensor]:
        """Count the last forward's accesses; 'micro': select this micro-batch's rows. Returns the counts."""
        counts = self.recorder.counts(attention_mask)
        if self.reduce is not None:
            counts = {i: self.reduce(c) for i, c in counts.items()}
        if self.granularity == "step":
            for i, c in counts.items():
                self._accum[i] = self._accum[i] + c if i in self._accum else c
            return counts
        self._micro = {i: self._rows(i, c) for i, c in counts.items()}
        for i, m in self._micro.items():
            self._union[i] = self._union[i] | m if i in self._union else m
        self._micro_list.append(self._micro)
        return counts

    @torch.no_grad()
    def before_step(self) -> dict[int, torch.Tensor]:
        """Finalise the step's rows, zero value grads outside them, hand them to the optimizer.

        Call after the last backward and before gradient clipping / optimizer.step(). Returns
        {layer: rows updated, a 0-d tensor on the device (no host sync)} for logging; the masks are
        in `last_rows`.
        """
        if self.granularity == "step":
            if not self._accum:
                raise RuntimeError("before_step() without any after_forward() in this step")
            rows = {i: self._rows(i, c) for i, c in self._accum.items()}
        else:
            if not self._union:
                raise RuntimeError("before_step() without any after_forward() in this step")
            rows = self._union
        for i, p in self.values.items():
            if p.grad is not None:
                p.grad.masked_fill_(~rows[i].unsqueeze(1), 0)  # (N, v_dim): also what clipping sees
        self.optimizer.set_rows({self.values[i]: m for i, m in rows.items()})
        self.last_rows = rows
        self.last_micro_rows, self._micro_list = self._micro_list, []
        self._accum, self._micro, self._union = {}, {}, {}
        return {i: m.sum() for i, m in rows.items()}

    def close(self) -> None:
        """Remove the hooks (forward hooks on the memory, gradient hooks on the values)."""
        self.recorder.close()
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self) -> "SparseUpdater":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
