"""Row-masked optimizers for SMF value tables.

    opt = OPTIMIZERS["adamw"](values, lr=5e-4)   # a torch.optim.Optimizer: LambdaLR etc. work
    opt.set_rows({values[0]: mask0, ...})        # bool (N,) per value table, before every step
    opt.step()                                   # masks are consumed by the step

- `sgd`: p[r] -= lr·(g[r] + wd·p[r]) for selected rows r; other rows are never written.
- `adamw`: leak-free AdamW: only selected rows get m, v, their own step count (bias correction
  is per row) and the decoupled weight decay; unselected rows and their state are bit-identical.
- `adamw_leaky`: torch AdamW on gradients zeroed outside the selection (QWEN): momentum keeps
  moving rows selected earlier, and weight decay > 0 shrinks every row. For reproduction only.

Every parameter that has a gradient must have a mask set before `step()`, or `step()` raises:
a missing mask is a bug in the loop, not "update everything".

`sgd` and `adamw` update through `Rows`: on a CPU they gather the R selected rows (finding them is
a host sync, free there); on an accelerator they compute every row and keep the selected ones with
`torch.where` — no host sync, and unselected rows are still bit-identical (`dense=` forces either).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")


class Rows:
    """The selected rows of one step, read (`get`) and written (`put`) either gathered (R rows,
    indices found on the host) or dense (all N rows, the update kept where the mask is set)."""

    def __init__(self, mask: torch.Tensor, dense: bool):
        self.mask, self.dense = mask, dense                                      # (N,) bool
        self.index = None if dense else mask.nonzero().squeeze(1)               # (R,)

    def get(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone() if self.dense else t.index_select(0, self.index)        # (N | R, …)

    def put(self, t: torch.Tensor, new: torch.Tensor) -> None:
        if self.dense:
            keep = self.mask.view(-1, *[1] * (t.dim() - 1))                      # (N, 1, …)
            t.copy_(torch.where(keep, new, t))
        else:
            t.index_copy_(0, self.index, new)


class RowMasked:
    """Mixin: per-parameter row masks for the next step."""

    def _init_rows(self, dense: bool | None = None) -> None:
        self._rows: dict[torch.Tensor, torch.Tensor] = {}
        self._dense = dense            # None: dense on accelerators (no host sync), gathered on a CPU

    def set_rows(self, rows: Mapping[torch.Tensor, torch.Tensor]) -> None:
        """rows: {param (N, D): bool (N,)} for the next step()."""
        mine = {p for g in self.param_groups for p in g["params"]}
        for p, m in rows.items():
            if p not in mine:
                raise ValueError("set_rows got a parameter this optimizer does not hold")
            if m.dtype != torch.bool or m.shape != p.shape[:1]:
                raise ValueError(f"row mask must be bool {tuple(p.shape[:1])}, got {m.dtype} {tuple(m.shape)}")
            self._rows[p] = m.to(p.device)

    def _take_rows(self, p: torch.Tensor) -> torch.Tensor:
        try:
            return self._rows[p]
        except KeyError:
            raise RuntimeError("step() on a parameter with a gradient but no row mask: call set_rows() first") from None

    def _take(self, p: torch.Tensor) -> Rows:
        dense = p.device.type != "cpu" if self._dense is None else self._dense
        return Rows(self._take_rows(p), dense)

    def _update_rows(self, p: torch.Tensor, r: Rows, group: dict) -> None:
        raise NotImplementedError  # write p's rows r.get/put from p.grad; never touch another row

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        try:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update_rows(p, self._take(p), group)
        finally:
            self._rows.clear()  # masks are for one step
        return loss


@OPTIMIZERS.register("sgd")
class RowSGD(RowMasked, torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1.0, weight_decay: float = 0.0, dense: bool | None = None):
        # lr: LIN used 2–5 on a 1M-slot memory; re-tune per memory size. wd: LIN uses none.
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {lr}, {weight_decay}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self._init_rows(dense)

    def _update_rows(self, p: torch.Tensor, r: Rows, group: dict) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        g = r.get(p.grad).to(p.dtype)  # (R, D)
        w = r.get(p)  # (R, D)
        if wd:
            g = g.add(w, alpha=wd)  # L2 decay, selected rows only
        r.put(p, w.add(g, alpha=-lr))


@OPTIMIZERS.register("adamw")
class RowAdamW(RowMasked, torch.optim.Optimizer):
    def __init__(self, params, lr: float = 5e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, dense: bool | None = None):
        # lr 5e-4: QWEN stage 2. betas, eps: torch defaults (HF Trainer's). wd 0: HF Trainer default, as QWEN.
        if lr < 0 or weight_decay < 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"bad AdamW hyperparameters lr={lr} betas={betas} eps={eps} wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self._init_rows(dense)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch moves loaded state to each parameter's device except tensors keyed "step" (its own
        scalar steps stay on the CPU); this one's per-row steps (N,) live with the rows, so they
        follow too (a checkpoint saved by the rank on another GPU, or loaded onto the CPU)."""
        super().load_state_dict(state_dict)
        for p, st in self.state.items():
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(p.device)

    def _update_rows(self, p: torch.Tensor, r: Rows, group: dict) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        st = self.state[p]
        if not st:
            st["step"] = torch.zeros(p.shape[0], dtype=torch.long, device=p.device)  # (N,) per row
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # (N, D)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # (N, D)
        g = r.get(p.grad).to(p.dtype)  # (R, D)
        s = r.get(st["step"]) + 1  # (R,)
        m = r.get(st["exp_avg"]).lerp_(g, 1 - b1)  # (R, D)
        v = r.get(st["exp_avg_sq"]).mul_(b2).addcmul_(g, g, value=1 - b2)  # (R, D)
        sf = s.to(p.dtype).unsqueeze(1)  # (R, 1)
        bc1 = 1 - b1**sf  # (R, 1) bias corrections, per row
        bc2 = 1 - b2**sf  # (R, 1)
        w = r.get(p)  # (R, D)
        if wd:
            w.mul_(1 - lr * wd)  # decoupled decay, selected rows only
        w.sub_(lr / bc1 * m / (v.sqrt() / bc2.sqrt() + eps))
        r.put(st["step"], s)
        r.put(st["exp_avg"], m)
        r.put(st["exp_avg_sq"], v)
        r.put(p, w)


@OPTIMIZERS.register("adamw_leaky")
class LeakyAdamW(RowMasked, torch.optim.AdamW):
    """QWEN's optimizer: plain AdamW, gradient zeroed outside the selection. Rows DO leak."""

    def __init__(self, params, lr: float = 5e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        # Same defaults as `adamw` (QWEN: HF Trainer, wd 0); set weight_decay > 0 to see the decay leak too.
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
        self._init_rows()

    @torch.no_grad()
    def step(self, closure=None):
        try:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.masked_fill_(~self._take_rows(p).unsqueeze(1), 0)  # (N, D): keep selected rows
        finally:
            self._rows.clear()
        return torch.optim.AdamW.step(self, closure)  # not RowMasked.step: the gradients are masked
