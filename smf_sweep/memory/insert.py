"""Put memory layers into a HF Qwen2-style causal LM, find them, freeze around them, cache them.

    wrappers = insert_memory(model, MemoryConfig(layers=(6, 12, 18)))
    values = freeze_for_sparse(model)          # SMF: only the value tables train
    params = freeze_for_retrofit(model)        # dense retrofit: all memory params, base frozen
    save_memory(model, "retrofit/memory.pt"); load_memory(fresh_model, "retrofit/memory.pt")

The memory reads what the FFN reads: the input of `model.model.layers[i].mlp`, i.e. the output of
`post_attention_layernorm`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .layer import MemoryConfig, ProductKeyMemory

FORMAT = 1  # version of the save_memory file layout


class MemoryMLP(nn.Module):
    """Replaces `layer.mlp`: replace → Mem(x); additive → FFN(x) + α·Mem(x); zero_values → FFN(x) + Mem(x)."""

    def __init__(self, ffn: nn.Module, memory: ProductKeyMemory, cfg: MemoryConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.mode, self.layer_idx = cfg, cfg.mode, layer_idx
        self.memory = memory
        self.ffn = None if cfg.mode == "replace" else ffn  # replace drops the FFN's parameters
        self.alpha = None
        if cfg.mode == "additive":
            w = next(memory.w1.parameters())
            self.alpha = nn.Parameter(torch.tensor(float(cfg.alpha_init), device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T, d) -> (B, T, d)
        m = self.memory(x).to(x.dtype)
        if self.mode == "replace":
            return m
        if self.mode == "additive":
            return self.ffn(x) + self.alpha.to(x.dtype) * m
        return self.ffn(x) + m  # zero_values: m ≡ 0 at init

    def memory_state_dict(self) -> dict[str, torch.Tensor]:
        """Own parameters without the wrapped FFN's (those belong to the base model)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("ffn.")}


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    try:
        return model.model.layers
    except AttributeError:
        raise TypeError(f"{type(model).__name__} has no model.layers (expected a HF *ForCausalLM)") from None


def insert_memory(model: nn.Module, cfg: MemoryConfig, generator: torch.Generator | None = None) -> list[MemoryMLP]:
    """Wrap `model.model.layers[i].mlp` for i in cfg.layers; returns the wrappers in layer order.

    Memory parameters take the device and dtype of the FFN they sit beside (values stay fp32).
    `generator` makes the init independent of the global RNG's history; the init is drawn on the
    generator's device and copied to the model's, so a CPU generator gives the same memory on CPU
    and CUDA (ProductKeyMemory.reset_parameters). In `zero_values` mode
    the value table AND the output bias of W2 are zeroed, so Mem(x) ≡ 0 and the model's function
    is unchanged bit for bit (the W2 bias would otherwise add a constant).
    """
    layers = _decoder_layers(model)
    if memory_layers(model):
        raise ValueError("model already has memory layers")
    if max(cfg.layers) >= len(layers):
        raise ValueError(f"memory layers {cfg.layers} out of range for {len(layers)} decoder layers")
    d = model.config.hidden_size
    wrappers = []
    for i in sorted(cfg.layers):
        ffn = layers[i].mlp
        ref = next(ffn.parameters())
        mem = ProductKeyMemory(d, cfg, device=ref.device)
        if ref.device.type != "meta":
            mem.reset_parameters(generator)
            if cfg.mode == "zero_values":
                with torch.no_grad():
                    mem.values.zero_()
                    mem.w2.bias.zero_()
        mem.to(dtype=ref.dtype)  # values stay fp32 (ProductKeyMemory._apply)
        w = MemoryMLP(ffn, mem, cfg, i)
        layers[i].mlp = w
        wrappers.append(w)
    return wrappers


def memory_layers(model: nn.Module) -> list[MemoryMLP]:
    """The memory wrappers of a model, found by type (not by parameter names), in layer order."""
    return sorted((m for m in model.modules() if isinstance(m, MemoryMLP)), key=lambda w: w.layer_idx)


def memory_config(model: nn.Module) -> MemoryConfig:
    ws = memory_layers(model)
    if not ws:
        raise ValueError("model has no memory layers")
    return ws[0].cfg


def value_params(model: nn.Module) -> dict[int, nn.Parameter]:
    """{layer_idx: value table (N, v_dim)}."""
    return {w.layer_idx: w.memory.values for w in memory_layers(model)}


def memory_params(model: nn.Module) -> list[nn.Parameter]:
    """Every memory parameter (query net, keys, values, W1, W2, α); no side effects."""
    params = []
    for w in memory_layers(model):
        params += list(w.memory.parameters()) + ([w.alpha] if w.alpha is not None else [])
    return params


def freeze_for_retrofit(model: nn.Module) -> list[nn.Parameter]:
    """Dense retrofit: all memory parameters trainable, the base model (wrapped FFNs too) frozen."""
    model.requires_grad_(False)
    params = memory_params(model)
    for p in params:
        p.requires_grad_(True)
    return params


def freeze_for_sparse(model: nn.Module) -> list[nn.Parameter]:
    """SMF: only the value tables trainable (addressing, W1, W2, α and the base model frozen)."""
    model.requires_grad_(False)
    params = list(value_params(model).values())
    for p in params:
        p.requires_grad_(True)
    return params


def save_memory(model: nn.Module, path: str | Path) -> None:
    """Save the memory parameters and their MemoryConfig (not the base model) to one file."""
    ws = memory_layers(model)
    payload = {
        "format": FORMAT,
        "config": memory_config(model).to_dict(),
        "layers": {w.layer_idx: {k: v.detach().cpu() for k, v in w.memory_state_dict().items()} for w in ws},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_memory(model: nn.Module, path: str | Path) -> list[MemoryMLP]:
    """Insert memory (if absent) with the saved config and load its parameters; returns the wrappers."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: memory file format {payload.get('format')!r}, expected {FORMAT}")
    cfg = MemoryConfig.from_dict(payload["config"])
    ws = memory_layers(model) or insert_memory(model, cfg)
    if ws[0].cfg != cfg:
        raise ValueError(f"model's memory config {ws[0].cfg} differs from {path}'s {cfg}")
    for w in ws:
        missing, unexpected = w.load_state_dict(payload["layers"][w.layer_idx], strict=False)
        if unexpected or any(not k.startswith("ffn.") for k in missing):
            raise ValueError(f"{path} layer {w.layer_idx}: missing {missing}, unexpected {unexpected}")
    return ws
