"""Product-key memory layer ("Memory+", BERGES) and its config.

    mem = ProductKeyMemory(d=896, cfg=MemoryConfig())
    out = mem(x)                    # x (B, T, d) -> out (B, T, d)
    scores, idx = mem.address(x)    # (B, T, H, k) each: what the forward reads

Counting sits outside the layer: `counting.AccessRecorder` puts a forward hook on `mem.address`,
whose output carries the slot indices of every (token, head, top-k position).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("replace", "additive", "zero_values")


@dataclass(frozen=True)
class MemoryConfig:
    """Where the memory goes and how big it is. Defaults: QWEN's setup for Qwen2.5-0.5B."""

    layers: tuple[int, ...] = (6, 12, 18)  # QWEN: layers 6, 12, 18 of 24
    n_keys: int = 128  # QWEN: sub-keys per half; N = n_keys² = 16,384 slots per layer
    heads: int = 4  # QWEN/BERGES: query heads, summed
    k: int = 16  # QWEN: slots read per head per token
    d_k: int = 256  # QWEN: query/key size per head (two halves of 128)
    v_dim: int | None = None  # QWEN: None = the model dim (896), so no value projection is needed
    mode: str = "additive"  # QWEN's default insertion: FFN(x) + α·Mem(x)
    alpha_init: float = 0.01  # QWEN: initial α of the additive mode
    count_padding: bool = False  # [ours] pads are not accesses (LIN); True reproduces QWEN's count

    def __post_init__(self) -> None:
        layers = self.layers
        if isinstance(layers, int) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ValueError(f"layers must be a sequence of ints, got {layers!r}")
        layers = tuple(layers)
        if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
            raise ValueError(f"layers must be non-empty, non-negative and distinct, got {layers!r}")
        object.__setattr__(self, "layers", layers)  # frozen: lists from YAML become tuples
        for name in ("n_keys", "heads", "k", "d_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.k > self.n_keys:
            raise ValueError(f"k={self.k} must be <= n_keys={self.n_keys} (top-k per half of the keys)")
        if self.d_k % 2:
            raise ValueError(f"d_k={self.d_k} must be even (the query splits into two halves)")
        if self.v_dim is not None and (not isinstance(self.v_dim, int) or self.v_dim < 1):
            raise ValueError(f"v_dim must be None (model dim) or a positive int, got {self.v_dim!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not math.isfinite(float(self.alpha_init)):
            raise ValueError(f"alpha_init must be finite, got {self.alpha_init!r}")
        if not isinstance(self.count_padding, bool):
            raise ValueError(f"count_padding must be a bool, got {self.count_padding!r}")

    @property
    def n_slots(self) -> int:
        return self.n_keys**2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MemoryConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MemoryConfig keys: {sorted(unknown)}")
        return cls(**{**d, "layers": tuple(d.get("layers", cls.layers))})


class ProductKeyAddress(nn.Module):
    """Query net + product keys: x (B, T, d) -> (scores, indices), each (B, T, H, k).

    The addressing half of the memory. Its parameters define which slots a token reads; they are
    what the background statistics' fingerprint hashes, and they stay frozen during SMF.
    """

    def __init__(self, d: int, heads: int, n_keys: int, d_k: int, k: int, device=None):
        super().__init__()
        self.heads, self.n_keys, self.d_k, self.k = heads, n_keys, d_k, k
        self.query = nn.Linear(d, heads * d_k, bias=True, device=device)  # BERGES: one Linear, bias
        self.keys = nn.Parameter(torch.empty(2 * heads * n_keys, d_k // 2, device=device))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        H, n, k, half = self.heads, self.n_keys, self.k, self.d_k // 2
        q = self.query(x).view(B, T, H, 2, half)  # (B, T, H, 2, d_k/2): the two halves per head
        keys = self.keys.view(H, 2, n, half)  # (H, 2, n_keys, d_k/2): own sub-keys per head and half
        s = torch.einsum("bthcd,hcnd->bthcn", q, keys)  # (B, T, H, 2, n_keys) raw dot products
        s, i = s.topk(k, dim=-1)  # (B, T, H, 2, k) best sub-keys per half
        sums = s[..., 0, :, None] + s[..., 1, None, :]  # (B, T, H, k, k): s1[a] + s2[b]
        cand = i[..., 0, :, None] * n + i[..., 1, None, :]  # (B, T, H, k, k): slot i1*n_keys + i2
        scores, best = sums.flatten(-2).topk(k, dim=-1)  # (B, T, H, k) over the k² sums
        idx = cand.flatten(-2).gather(-1, best)  # (B, T, H, k) slot indices
        return scores, idx


class ProductKeyMemory(nn.Module):
    """Memory+ layer: out = W2 (y ⊙ silu(W1 x)), y = Σ_heads Σ_k softmax(scores)·values[idx].

    The value table stays fp32 whatever the model dtype: `_apply` (behind `.to`, `.half()`,
    `.bfloat16()`, ...) lets every other parameter follow the cast but gives `values` back its
    fp32 data, moved to the new device only. The fp32 table read before the cast is reused, so
    no precision is lost through a bf16 round trip.
    """

    def __init__(self, d: int, cfg: MemoryConfig, device=None):
        super().__init__()
        self.d, self.v_dim = d, cfg.v_dim or d
        self.heads, self.k, self.n_slots = cfg.heads, cfg.k, cfg.n_slots
        self.address = ProductKeyAddress(d, cfg.heads, cfg.n_keys, cfg.d_k, cfg.k, device=device)
        self.values = nn.Parameter(torch.empty(self.n_slots, self.v_dim, device=device, dtype=torch.float32))
        self.w1 = nn.Linear(d, self.v_dim, bias=True, device=device)  # swilu gate
        self.w2 = nn.Linear(self.v_dim, d, bias=True, device=device)  # output projection
        if self.values.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """BERGES init. Biases: nn.Linear's default U(±1/sqrt(fan_in)), as BERGES leaves them.

        Every initialiser draws into a scratch tensor on the generator's device (the CPU when
        `generator` is None, from the global CPU RNG) and the values are then copied into the
        parameter, wherever it lives. So a CPU generator works for a memory on CUDA (or `meta`),
        and the same seed gives the same init on every device.
        """
        g = generator
        draw_on = g.device if g is not None else torch.device("cpu")

        def init(p: torch.Tensor, fn, *args) -> None:
            t = torch.empty(p.shape, dtype=p.dtype, device=draw_on)  # same shape: same fans for xavier
            fn(t, *args, generator=g)
            p.copy_(t)

        init(self.address.keys, nn.init.uniform_, -self.address.d_k**-0.5, self.address.d_k**-0.5)
        init(self.values, nn.init.normal_, 0.0, self.v_dim**-0.5)
        init(self.address.query.weight, nn.init.xavier_uniform_)
        init(self.w1.weight, nn.init.normal_, 0.0, self.d**-0.5)
        init(self.w2.weight, nn.init.normal_, 0.0, self.d**-0.5)
        for lin in (self.address.query, self.w1, self.w2):
            b = lin.in_features**-0.5
            init(lin.bias, nn.init.uniform_, -b, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, k = self.heads, self.k
        scores, idx = self.address(x)  # (B, T, H, k) each
        w = F.softmax(scores.float(), dim=-1)  # (B, T, H, k) fp32 per head
        # embedding_bag is not covered by autocast: weights must be in the values' dtype (fp32).
        y = F.embedding_bag(
            idx.reshape(B * T, H * k),  # (B·T, H·k): one bag per token, heads summed
            self.values,  # (N, v_dim)
            per_sample_weights=w.reshape(B * T, H * k).to(self.values.dtype),  # (B·T, H·k)
            mode="sum",
        ).view(B, T, self.v_dim)  # (B, T, v_dim)
        gate = F.silu(self.w1(x))  # (B, T, v_dim)
        return self.w2(y.to(gate.dtype) * gate)  # (B, T, d)

    def _apply(self, fn, recurse=True):
        table = self.values.data  # fp32, before any cast
        super()._apply(fn, recurse)
        if self.values.dtype != table.dtype:  # a dtype cast: keep fp32, follow the device only
            self.values.data = table.to(self.values.device)
            if self.values.grad is not None:
                self.values.grad = self.values.grad.to(table.dtype)
        return self


def memory_param_count(d: int, cfg: MemoryConfig) -> int:
    """Parameters of one memory layer for model dim d (α of the additive mode not included)."""
    v = cfg.v_dim or d
    query = d * cfg.heads * cfg.d_k + cfg.heads * cfg.d_k
    keys = 2 * cfg.heads * cfg.n_keys * (cfg.d_k // 2)
    return query + keys + cfg.n_slots * v + (d * v + v) + (v * d + d)
