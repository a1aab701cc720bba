"""Tokenizer training and pretraining of the world's small Qwen2 model on general text only."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

import torch

from .config import WorldConfig

EOS = "<|endoftext|>"          # Qwen2.5's end-of-text token; also the pad token, as in Qwen2.5 base
SPECIALS = [EOS, "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: list[str], cfg: WorldConfig, out: Path):
    """Byte-level BPE with Qwen2's exact normaliser and pre-tokeniser (digits split one by one, …),
    trained on the world's text and saved with save_pretrained. AutoTokenizer loads it as a
    Qwen2Tokenizer, which rebuilds that pre-tokeniser itself: with any other one, the tokenizer
    users load would split text differently from the one the model was pretrained with."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
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


class PackedBatcher:
    """Packed causal-LM batches, the Batcher interface of the one training loop.

    Each epoch shuffles the documents (plus `fresh(epoch)`: new texts every epoch), joins them with
    EOS and cuts seq_len windows in a seeded order. Epochs are built in order as they are reached."""

    def __init__(self, ids: list[list[int]], encode: Callable[[str], list[int]], cfg: WorldConfig,
                 fresh: Callable[[int], list[str]] | None):
        self.ids, self.encode, self.cfg, self.fresh = ids, encode, cfg, fresh
        self.rng = random.Random(cfg.seed)
        self.g = torch.Generator().manual_seed(cfg.seed)
        self.epochs: list[torch.Tensor] = []          # (batches, B, T) per epoch built so far
        self.per_epoch = self._epoch(0).shape[0]      # approximate: epochs differ slightly in length
        self.offsets = [0]

    def _epoch(self, e: int) -> torch.Tensor:
        while len(self.epochs) <= e:
            k = len(self.epochs)
            docs = self.ids + ([self.encode(d) for d in self.fresh(k)] if self.fresh else [])
            order = list(range(len(docs)))
            self.rng.shuffle(order)
            flat = torch.tensor([t for i in order for t in docs[i]])
            T, B = self.cfg.seq_len, self.cfg.batch_size
            n = flat.numel() // T
            chunks = flat[: n * T].view(n, T)[torch.randperm(n, generator=self.g)]     # (n, T)
            self.epochs.append(chunks[: n // B * B].view(n // B, B, T))                  # (batches, B, T)
        return self.epochs[e]

    def micro_batch(self, k: int) -> dict[str, torch.Tensor]:
        e = 0
        while k >= self._epoch(e).shape[0]:
            k -= self._epoch(e).shape[0]
            e += 1
        x = self._epoch(e)[k]                                                            # (B, T)
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}


def encoder(tokenizer) -> Callable[[str], list[int]]:
    """A pretraining document's token ids, EOS-terminated (the packing's separator)."""
    return lambda d: tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def pretrain(model, tokenizer, docs: list[str], cfg: WorldConfig, progress: bool = True,
             fresh: Callable[[int], list[str]] | None = None) -> dict:
    """Causal-LM pretraining on packed general text through THE training loop
    (train_loop.run_stage): AdamW (β2 0.95, wd 0.1), linear warmup, cosine to 10 %."""
    from ..methods.base import Setup, TorchStepper, warmup_cosine
    from ..train_loop import TrainConfig, run_stage

    encode = encoder(tokenizer)
    ids = [encode(d) for d in docs]
    n_tokens = sum(map(len, ids))
    batcher = PackedBatcher(ids, encode, cfg, fresh)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    stepper = TorchStepper(params, opt, warmup_cosine(cfg.warmup_steps, cfg.steps, floor=0.1), grad_clip=1.0)
    tcfg = TrainConfig(lr=cfg.lr, max_steps=cfg.steps, micro_batch_size=cfg.batch_size, effective_batch=cfg.batch_size,
                       max_len=cfg.seq_len, warmup_steps=cfg.warmup_steps, lr_floor=0.1,
                       weight_decay=cfg.weight_decay, precision="fp32", log_every=50)
    losses: list[float] = []
    t0 = time.perf_counter()
    run_stage(Setup(model=model, stepper=stepper, export=lambda: model), batcher, tcfg,
              lambda m, _: losses.append(m["pretrain/loss"]), stage="pretrain", total_steps=cfg.steps,
              progress=progress)
    model.eval()
    seen = cfg.steps * cfg.batch_size * cfg.seq_len
    epoch_tokens = batcher.per_epoch * cfg.batch_size * cfg.seq_len      # static corpus + one epoch's fresh texts
    return {"corpus_tokens": n_tokens, "epoch_tokens": epoch_tokens, "tokens_seen": seen,
            "epochs": round(seen / epoch_tokens, 1),
            "final_loss": round(losses[-1], 4), "seconds": round(time.perf_counter() - t0, 1)}
