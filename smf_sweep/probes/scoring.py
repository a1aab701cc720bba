"""Batched log-likelihood scoring and greedy generation for causal LMs, shared by every probe.

`continuation_logprobs` and `greedy_generate` pack many sequences into one LEFT-padded forward pass
with explicit position ids (each row counts its positions from its own first real token), so a row
scores exactly as it would alone (tests compare against batch size 1 and against HF's own loss /
generate). Only the logits of the positions that are scored are computed (`logits_to_keep`): with a
150k vocabulary the full logits of a batch would not fit in memory.

`grouped_logprobs` scores groups of pairs that share their context (a question's options) with the
context run once and its KV cache reused by each continuation; the same numbers to float tolerance.

`hf_generate` is transformers' own `generate` under an explicit GenerationConfig (so the model's
generation_config, e.g. its repetition penalty, applies), one prompt per call by default.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria,
                          StoppingCriteriaList)
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5.x renamed the KV-cache argument/field `past_key_values` -> `cache`
_CACHE = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def max_positions(model) -> int | None:
    """The model's context length from its config, if it states one; a wrapper (DeepSpeedEngine, DDP)
    has no config of its own and is read through its `module` (else a probe's windows would pass the
    context: a DeepSpeed engine once gave the world's WikiText 4.19 for its module's 3.10)."""
    model = getattr(model, "module", model)
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


LOGITS_BUDGET = 2 ** 30   # logits one scoring forward may hold (elements: 2 GiB in bf16). At Qwen's 151,936-token
#                           vocabulary a 64-row batch of 1,023-token windows would hold 9.9e9 (18.5 GiB in bf16)


def vocab_size(model) -> int | None:
    """The model's output vocabulary from its config (through a wrapper's `module`), if it states one."""
    model = getattr(model, "module", model)
    return getattr(getattr(model, "config", None), "vocab_size", None)


def logit_rows(model, keep: int, budget: int = LOGITS_BUDGET) -> int | None:
    """How many rows of `keep` positions fit the logits budget in one forward (>= 1); None: no limit known."""
    V = vocab_size(model)
    return None if not V else max(1, budget // (keep * V))


def encode_pair(tokenizer, context: str, continuation: str, *, add_special_tokens: bool) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), split where the context's own encoding ends.

    Trailing spaces of the context move to the continuation and the two are tokenized together,
    as lm-evaluation-harness's `_encode_pair` does: "Answer:" + " A" -> the tokens of " A"."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
    return whole[:len(ctx)], whole[len(ctx):]


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """(ids, attention_mask, position_ids), each (B, T), rows right-aligned."""
    B, T = len(rows), max(len(r) for r in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[b, T - len(r):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): 0.. from each row's first real token
    return ids.to(device), mask.to(device), pos.to(device)


def _forward(model, ids, mask, pos, *, keep: int, use_cache: bool = False, cache=None):
    kwargs = {_CACHE: cache} if cache is not None else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=use_cache, logits_to_keep=keep,
                **kwargs)
    return out.logits[:, -keep:], getattr(out, _CACHE, None)  # (B, keep, V); slicing guards models that ignore keep


@torch.inference_mode()
def continuation_logprobs(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, pad_id: int,
                          batch_size: int = 8, max_length: int | None = None, progress: bool = False,
                          desc: str = "scoring", budget: int = LOGITS_BUDGET) -> list[np.ndarray]:
    """Log-probability of every continuation token given its context, one float64 array per pair.

    Each pair is (context ids, continuation ids), context non-empty. Input = (ctx + cont)[:-1],
    left-truncated to `max_length` tokens (lm-evaluation-harness's rule) when given. A batch whose
    logits (rows × longest continuation × vocabulary) would pass `budget` elements runs as several
    forwards of fewer rows (the same scores up to float reduction order)."""
    device = model_device(model)
    out: list[np.ndarray | None] = [None] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))  # less padding
    with tqdm(total=len(pairs), desc=desc, disable=not progress, leave=False) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            rows, conts = [], []
            for i in idx:
                ctx, cont = list(pairs[i][0]), list(pairs[i][1])
                if not ctx or not cont:
                    raise ValueError(f"pair {i}: empty context or continuation")
                seq = ctx + cont
                if max_length is not None:
                    if len(cont) > max_length:
                        raise ValueError(f"pair {i}: continuation of {len(cont)} tokens > max_length {max_length}")
                    seq = seq[-(max_length + 1):]
                rows.append(seq[:-1])
                conts.append(cont)
            step = logit_rows(model, max(len(c) for c in conts), budget) or len(rows)
            for c0 in range(0, len(rows), step):
                part = slice(c0, c0 + step)
                ids, mask, pos = _left_pad(rows[part], pad_id, device)
                K = max(len(c) for c in conts[part])
                logits, _ = _forward(model, ids, mask, pos, keep=K)  # (b, K, V), b <= step
                for b, (i, cont) in enumerate(zip(idx[part], conts[part])):
                    lp = torch.log_softmax(logits[b, K - len(cont):].float(), dim=-1)  # (c, V), one row at a time
                    tgt = torch.tensor(cont, device=lp.device)[:, None]  # (c, 1)
                    out[i] = lp.gather(-1, tgt)[:, 0].double().cpu().numpy()
                del logits
            bar.update(len(idx))
    return out  # type: ignore[return-value]


# ---- a shared context per group: its KV cache run once, reused by every continuation -----------------
def shareable(group: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int | None) -> bool:
    """Whether a group's pairs can share one context pass and score exactly as `continuation_logprobs`.

    Yes when every pair has the SAME context ids (of at least 2 tokens) and a non-empty continuation,
    and no pair is left-truncated by `max_length`. `encode_pair` splits `context + continuation`,
    tokenised whole, where the context's own encoding ends; a tokenizer that merges across that
    boundary can give different context ids per option. Such a group (and any truncated one) is
    scored unshared: its tokens are never changed to make it shareable."""
    ctx = list(group[0][0]) if group else []
    if len(ctx) < 2 or any(list(c) != ctx or not x for c, x in group):
        return False
    return max_length is None or all(len(ctx) + len(x) - 1 <= max_length for _, x in group)


@torch.inference_mode()
def grouped_logprobs(model, groups: Sequence[Sequence[tuple[Sequence[int], Sequence[int]]]], *, pad_id: int,
                     share_prefix: bool = True, batch_size: int = 8, max_length: int | None = None,
                     progress: bool = False, desc: str = "scoring") -> list[np.ndarray]:
    """`continuation_logprobs` of every pair of every group, flattened in order (group 0's pairs, …),
    the groups' shared context run once per group when `share_prefix` (a question's four options).

    Shared path, per batch of whole groups whose distinct continuation rows total <= batch_size:
    1. prefix pass: each group's context but its last token, LEFT-padded (`_left_pad`: positions
       0.. from each row's first real token) over the groups, `use_cache=True`;
    2. the cache is indexed to one row per distinct continuation row (`batch_select_indices`), a
       row = the context's last token + the continuation but its last, RIGHT-padded; its position
       ids continue the group's own count (n_prefix + 0..K-1) and its attention mask is the
       group's prefix mask followed by the row's own. Every real token thus sees exactly the tokens
       and positions it sees in the unshared pass, so the log-probabilities agree to float
       reduction order. Identical rows in a group (the harness's one-token " A".." D" continuations
       all feed the context's last token) run once, as lm-evaluation-harness reuses the logits of
       one-token continuations of the same context.
    Groups that are not `shareable`, and every group when the model returns no cache with
    `batch_select_indices` (a model without transformers' Cache), are scored unshared."""
    flat = [p for g in groups for p in g]
    if not share_prefix:
        return continuation_logprobs(model, flat, pad_id=pad_id, batch_size=batch_size, max_length=max_length,
                                     progress=progress, desc=desc)
    starts = np.cumsum([0] + [len(g) for g in groups]).tolist()
    shared = [g for g in range(len(groups)) if shareable(groups[g], max_length)]
    alone = sorted(set(range(len(groups))) - set(shared))
    out: list[np.ndarray | None] = [None] * len(flat)
    device = model_device(model)
    order = sorted(shared, key=lambda g: -len(groups[g][0][0]))  # similar context lengths together: less padding
    batches, cur, rows = [], [], 0
    for g in order:
        n = len({(*c[-1:], *x[:-1]) for c, x in groups[g]})
        if cur and rows + n > batch_size:
            batches.append(cur)
            cur, rows = [], 0
        cur.append(g)
        rows += n
    batches += [cur] if cur else []
    with tqdm(total=len(flat), desc=desc, disable=not progress, leave=False) as bar:
        for k, batch in enumerate(batches):
            lps = _shared_batch(model, [groups[g] for g in batch], pad_id, device)
            if lps is None:  # no reusable cache from this model: everything left goes unshared
                alone = sorted(alone + [g for b in batches[k:] for g in b])
                break
            i = 0
            for g in batch:
                for j in range(starts[g], starts[g + 1]):
                    out[j], i = lps[i], i + 1
            bar.update(i)
        if alone:
            idx = [j for g in alone for j in range(starts[g], starts[g + 1])]
            lps = continuation_logprobs(model, [flat[j] for j in idx], pad_id=pad_id, batch_size=batch_size,
                                        max_length=max_length)
            for j, lp in zip(idx, lps):
                out[j] = lp
            bar.update(len(idx))
    return out  # type: ignore[return-value]


def _shared_batch(model, groups, pad_id: int, device) -> list[np.ndarray] | None:
    """Log-probs of every pair of `groups` (each `shareable`), in order; None if the model gives no Cache."""
    prefixes = [list(g[0][0][:-1]) for g in groups]
    ids, mask, pos = _left_pad(prefixes, pad_id, device)  # (G, P) each
    _, cache = _forward(model, ids, mask, pos, keep=1, use_cache=True)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    rows: list[list[int]] = []   # distinct (context's last token + continuation[:-1]) per group
    owner: list[int] = []        # the group of each row
    which: list[int] = []        # the row of each pair
    for gi, g in enumerate(groups):
        seen: dict[tuple[int, ...], int] = {}
        for ctx, cont in g:
            r = (ctx[-1], *cont[:-1])
            if r not in seen:
                seen[r] = len(rows)
                rows.append(list(r))
                owner.append(gi)
            which.append(seen[r])
    R, K = len(rows), max(len(r) for r in rows)
    ids2 = torch.full((R, K), pad_id, dtype=torch.long)
    mask2 = torch.zeros((R, K), dtype=torch.long)
    for r, row in enumerate(rows):  # right-padded: the real tokens follow the prefix directly
        ids2[r, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask2[r, :len(row)] = 1
    n_pre = torch.tensor([len(prefixes[g]) for g in owner], dtype=torch.long)  # (R,)
    pos2 = n_pre[:, None] + torch.arange(K)[None, :]  # (R, K): each group's count goes on
    sel = torch.tensor(owner, dtype=torch.long).to(device)  # (R,)
    cache.batch_select_indices(sel)  # (G, H, P, D) -> (R, H, P, D) per layer
    mask_all = torch.cat([mask.index_select(0, sel), mask2.to(device)], dim=1)  # (R, P + K)
    logits, _ = _forward(model, ids2.to(device), mask_all, pos2.to(device), keep=K, use_cache=True,
                         cache=cache)  # (R, K, V)
    # every pair's targets, padded to K: log p(t) = logit[t] - logsumexp(logits), one device->host copy
    N = len(which)
    tgt = torch.zeros((N, K), dtype=torch.long)
    lens = [len(cont) for g in groups for _, cont in g]
    for n, cont in enumerate(cont for g in groups for _, cont in g):
        tgt[n, :len(cont)] = torch.tensor(cont, dtype=torch.long)
    lse = torch.stack([torch.logsumexp(logits[r].float(), dim=-1) for r in range(R)])  # (R, K), a row at a time
    row = torch.tensor(which, dtype=torch.long).to(device)  # (N,)
    picked = logits[row[:, None], torch.arange(K, device=device)[None, :], tgt.to(device)].float()  # (N, K)
    lp = (picked - lse.index_select(0, row)).double().cpu().numpy()  # (N, K)
    return [lp[n, :c] for n, c in enumerate(lens)]


@torch.inference_mode()
def greedy_generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
                    eos_ids: Sequence[int] = (), stop: Callable[[list[int]], bool] | None = None,
                    batch_size: int = 8, progress: bool = False, desc: str = "generating") -> list[list[int]]:
    """Greedy continuations (argmax, ties to the lowest id), one token list per prompt.

    A row finishes after an `eos_ids` token (kept in its output) or when `stop(tokens)` is true;
    the batch stops when every row has finished or after `max_new_tokens`. Pure argmax: none of
    the model's generation_config (temperature, repetition penalty, …) applies; `hf_generate` is
    the one that honours it."""
    device = model_device(model)
    eos = set(eos_ids)
    out: list[list[int] | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    with tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            gen = _greedy_batch(model, [list(prompts[i]) for i in idx], max_new_tokens, pad_id, eos, stop, device)
            for i, g in zip(idx, gen):
                out[i] = g
            bar.update(len(idx))
    return out  # type: ignore[return-value]


def _greedy_batch(model, rows, max_new_tokens, pad_id, eos, stop, device) -> list[list[int]]:
    if any(not r for r in rows):
        raise ValueError("empty prompt")
    gen: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    if max_new_tokens <= 0:
        return gen
    ids, mask, pos = _left_pad(rows, pad_id, device)
    logits, cache = _forward(model, ids, mask, pos, keep=1, use_cache=True)  # (B, 1, V)
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1).tolist()  # (B,)
        for b, t in enumerate(nxt):
            if not done[b]:
                gen[b].append(t)
                done[b] = t in eos or (stop is not None and stop(gen[b]))
        if all(done) or step == max_new_tokens - 1:
            break
        feed = torch.tensor([[pad_id if d else t] for t, d in zip(nxt, done)], device=device)  # (B, 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, T+step+1)
        pos = pos[:, -1:] + 1  # (B, 1)
        logits, cache = _forward(model, feed, mask, pos, keep=1, use_cache=True, cache=cache)
    return gen


# ---- transformers' generate under an explicit GenerationConfig ---------------------------------------
# Settings whose logits processors read the (padded) input ids or its length: a left-padded batch
# would not give what one prompt alone gives, so hf_generate refuses to batch when one is active.
_PAD_SENSITIVE = {"no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0,
                  "min_length": 0, "bad_words_ids": None, "sequence_bias": None, "num_beams": 1,
                  "penalty_alpha": None, "guidance_scale": 1.0}


def eos_ids(eos: int | Sequence[int] | None) -> list[int]:
    """A generation config's `eos_token_id` (an int, a list of ints or None) as a list."""
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


class PadAwareRepetitionPenalty(LogitsProcessor):
    """HF's repetition penalty (CTRL: a seen token's logit x penalty if < 0, / penalty otherwise),
    seen = the row's ids after its `n_pad` leading pad positions (B,), prompt and generated tokens.

    transformers' own processor looks at every input id, so in a left-padded batch older versions
    penalise the pad token of every padded row; this one never does, in any version, and computes the
    same floats as HF's for an unpadded row."""

    def __init__(self, penalty: float, n_pad: torch.Tensor):
        self.penalty, self.n_pad = float(penalty), n_pad  # n_pad: (B,)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, T = input_ids.shape
        V = scores.shape[-1]
        real = torch.arange(T, device=input_ids.device)[None, :] >= self.n_pad.to(input_ids.device)[:, None]  # (B, T)
        seen = torch.zeros((B, V + 1), dtype=scores.dtype, device=scores.device)  # column V: ids beyond the logits
        seen.scatter_add_(1, input_ids.clamp(max=V), real.to(scores.dtype))
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)  # (B, V)
        return torch.where(seen[:, :V] > 0, penalised, scores)


class StopWhen(StoppingCriteria):
    """A row is done once `stop(its new tokens)` is true (lm-eval's stop sequences: the caller decodes
    the tail); `ends[b]` = how many new tokens row b had then. HF pads a done row from there on."""

    def __init__(self, stop: Callable[[list[int]], bool], prompt_len: int, rows: int):
        self.stop, self.T, self.ends = stop, prompt_len, [None] * rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kw) -> torch.BoolTensor:
        done = []
        for b, row in enumerate(input_ids[:, self.T:].tolist()):   # (B, new tokens so far)
            if self.ends[b] is None and self.stop(row):
                self.ends[b] = len(row)
            done.append(self.ends[b] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # (B,)


@torch.inference_mode()
def hf_generate(model, prompts: Sequence[Sequence[int]], *, generation_config: GenerationConfig, batch_size: int = 1,
                stop: Callable[[list[int]], bool] | None = None,
                progress: bool = False, desc: str = "generating") -> list[list[int]]:
    """`model.generate(input_ids, attention_mask, generation_config=generation_config)` for every prompt;
    per prompt its new tokens up to and including the first of `generation_config.eos_token_id`, or
    up to the token at which `stop(new tokens)` first held (a StoppingCriteria: the row ends there).

    batch_size 1 (the default): one prompt per call, no padding — exactly HF's generate.
    batch_size > 1: greedy only; LEFT-padded batches with an attention mask (HF derives each row's
    position ids from it), the repetition penalty applied by `PadAwareRepetitionPenalty` (pads never
    count as seen); settings that read the padded input (`_PAD_SENSITIVE`) are refused. A batch then
    gives one prompt's tokens up to float reduction order (tests check equality on small models)."""
    gc = generation_config
    eos = set(eos_ids(gc.eos_token_id))
    device = model_device(model)
    if batch_size > 1:
        if gc.do_sample:
            raise ValueError("hf_generate batches greedy decoding only (do_sample=False)")
        active = {k: getattr(gc, k, None) for k, neutral in _PAD_SENSITIVE.items()
                  if getattr(gc, k, None) not in (None, neutral)}
        if active:
            raise ValueError(f"generation settings {active} read the padded input; generate with batch_size=1")
        if gc.pad_token_id is None:
            raise ValueError("batched generation needs generation_config.pad_token_id")
    out: list[list[int] | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths together: less padding
    step = max(1, batch_size)
    with tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False) as bar:
        for s in range(0, len(order), step):
            idx = order[s:s + step]
            rows = [list(prompts[i]) for i in idx]
            if any(not r for r in rows):
                raise ValueError("empty prompt")
            gens, ends = _hf_generate_batch(model, rows, gc, device, stop)
            for i, g, end in zip(idx, gens, ends):
                n = next((k + 1 for k, t in enumerate(g) if t in eos), len(g))
                out[i] = g[:n if end is None else min(n, end)]
            bar.update(len(idx))
    return out  # type: ignore[return-value]


def _hf_generate_batch(model, rows: list[list[int]], gc: GenerationConfig, device,
                       stop: Callable[[list[int]], bool] | None = None) -> tuple[list[list[int]], list[int | None]]:
    """The rows' new tokens, and per row where `stop` ended it (None: it did not)."""
    processors = LogitsProcessorList()
    if len(rows) == 1:
        ids = torch.tensor(rows, dtype=torch.long, device=device)  # (1, T)
        mask = torch.ones_like(ids)
    else:
        ids, mask, _ = _left_pad(rows, gc.pad_token_id, device)  # (B, T) each
        penalty = float(gc.repetition_penalty) if gc.repetition_penalty is not None else 1.0
        if penalty != 1.0:
            gc = copy.deepcopy(gc)
            gc.repetition_penalty = 1.0  # not None: None would be refilled from model.generation_config
            n_pad = torch.tensor([ids.shape[1] - len(r) for r in rows], device=device)  # (B,)
            processors.append(PadAwareRepetitionPenalty(penalty, n_pad))
    T = ids.shape[1]
    when = None if stop is None else StopWhen(stop, T, len(rows))
    seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc, logits_processor=processors,
                          stopping_criteria=StoppingCriteriaList([when] if when else []))
    return [seqs[b, T:].tolist() for b in range(len(rows))], (when.ends if when else [None] * len(rows))
