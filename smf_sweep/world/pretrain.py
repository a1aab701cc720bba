"""Tokenizer training and pretraining of the world's small Qwen2 model on general text only."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from .config import WorldConfig

EOS = "<|endoftext|>"          # Qwen2.5's end-of-text token; also the pad token, as in Qwen2.5 base
SPECIALS = [EOS, "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: list[str], cfg: WorldConfig, out: Path):
    """Byte-level BPE (Qwen's tokenizer family) trained on the world's text, saved with
    save_pretrained so AutoTokenizer loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   model_max_length=cfg.max_positions)
    fast.save_pretrained(out)
    return fast


def build_model(cfg: WorldConfig, vocab_size: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    mc = Qwen2Config(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                     num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_positions,
                     rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                     bos_token_id=None, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(cfg.seed)
    return Qwen2ForCausalLM(mc)


def pretrain(model, tokenizer, docs: list[str], cfg: WorldConfig, progress: bool = True,
             fresh: Callable[[int], list[str]] | None = None) -> dict:
    """Packed causal-LM pretraining: each epoch shuffles the documents (plus `fresh(epoch)`, new
    texts every epoch), joins them with EOS and cuts seq_len windows; AdamW, linear warmup then
    cosine to 10%."""
    enc = lambda d: tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]  # noqa: E731
    ids = [enc(d) for d in docs]
    n_tokens = sum(map(len, ids))
    rng = random.Random(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)

    def batches():
        epoch = 0
        while True:
            epoch_ids = ids + ([enc(d) for d in fresh(epoch)] if fresh else [])
            epoch += 1
            order = list(range(len(epoch_ids)))
            rng.shuffle(order)
            flat = torch.tensor([t for i in order for t in epoch_ids[i]])
            n = flat.numel() // cfg.seq_len
            chunks = flat[: n * cfg.seq_len].view(n, cfg.seq_len)          # (n, T)
            perm = torch.randperm(n, generator=g)
            for s in range(0, n - cfg.batch_size + 1, cfg.batch_size):
                yield chunks[perm[s: s + cfg.batch_size]]                    # (B, T)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    t0, losses = time.perf_counter(), []
    it = batches()
    bar = tqdm(range(cfg.steps), desc="pretraining world model", disable=not progress, mininterval=2)
    for step in bar:
        x = next(it)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    seen = cfg.steps * cfg.batch_size * cfg.seq_len
    return {"corpus_tokens": n_tokens, "tokens_seen": seen, "epochs": round(seen / n_tokens, 1),
            "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "seconds": round(time.perf_counter() - t0, 1)}
