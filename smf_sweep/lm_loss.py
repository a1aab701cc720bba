"""The causal-LM loss of a micro-batch, optionally without ever holding its whole logits tensor.

    loss = lm_loss(model, batch, chunk=0)      # HF's own: model(**batch).loss, (B, T, V) logits in fp32
    loss = lm_loss(model, batch, chunk=1024)   # the same mean, the LM head and cross-entropy 1024 targets at a time

With `chunk` > 0 (`train.loss_chunk`): the model runs with `logits_to_keep=1` (its head sees the last
position only), a forward hook on its decoder takes the final hidden states, and the head plus
cross-entropy run over the positions that have a target only (labels ≠ -100, shifted as HF shifts
them), `chunk` targets at a time, each chunk under activation checkpointing (its logits are made
again in backward, never kept). Peak loss memory: chunk × V instead of B × T × V (Qwen2.5's V is
151,936: 2.5 GB of fp32 logits at 4 × 1024 tokens, before their gradient); the price is the head's
forward once more in backward. Same mean as HF's ForCausalLMLoss (sum over targets ÷ their count; the
logits cast to fp32 before the softmax, as HF casts them), in any autocast. Works through peft's
wrapper, a DeepSpeed engine (its module's hooks run: the head is called as a module) and SMF's memory
layers (they sit inside the decoder)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def hf_model(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside peft's and DeepSpeed's wrappers."""
    while True:
        if hasattr(model, "get_base_model"):          # peft.PeftModel
            model = model.get_base_model()
        elif hasattr(model, "module") and not hasattr(model, "get_decoder"):   # DeepSpeedEngine, DDP
            model = model.module
        else:
            return model


def _ce_sum(head: nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """h (n, H), y (n,) → Σ cross-entropy, the logits (n, V) in fp32 as HF's loss casts them."""
    return F.cross_entropy(head(h).float(), y, reduction="sum")


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], chunk: int = 0) -> torch.Tensor:
    """The mean next-token cross-entropy of `batch` (input_ids, attention_mask, labels: (B, T))."""
    if chunk <= 0:
        return model(**batch).loss
    inner = hf_model(model)
    head, decoder = inner.get_output_embeddings(), inner.get_decoder()
    seen: dict[str, torch.Tensor] = {}

    def keep(_mod, _args, out):
        seen["h"] = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    handle = decoder.register_forward_hook(keep)
    try:
        model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=1)
    finally:
        handle.remove()
    h = seen["h"][:, :-1]                                   # (B, T-1, H): position t predicts token t+1
    y = batch["labels"][:, 1:]                              # (B, T-1)
    has = y != IGNORE                                       # (B, T-1)
    h, y = h[has], y[has]                                   # (N, H), (N,): targets only
    n = y.numel()
    if n == 0:                                              # HF: a mean over no targets is NaN
        return h.sum() * float("nan")
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        total = total + checkpoint(_ce_sum, head, h[i:i + chunk], y[i:i + chunk], use_reentrant=False)
    return total / n
