"""train.loss_chunk (lm_loss.py): the LM head and cross-entropy a chunk of targets at a time give HF's
loss and HF's gradients, in fp32 and under bf16 autocast, bare, through peft, and through every
method's real trial (DeepSpeed's engine for full FT, SMF's memory layers), so turning it on changes
no result — only the memory the loss holds (bench/speed_cpu.py --only loss_chunk)."""
from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from smf_sweep.lm_loss import hf_model, lm_loss
from smf_sweep.precision import autocast
from smf_sweep.worker import train_worker
from tests.test_invariants import SMF_NULL, _config

CPU = torch.device("cpu")


def tiny(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg)


def batch(B: int = 3, T: int = 12) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths; labels -100 on the pads and on each row's first
    three tokens (a prompt), as loss_on: answer leaves them."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (B, T), generator=g)                      # (B, T)
    lengths = torch.tensor([T, T - 4, T - 7])[:B]
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()           # (B, T)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def loss_and_grads(model, b, chunk, precision="fp32"):
    model.zero_grad(set_to_none=True)
    with autocast(CPU, precision):
        loss = lm_loss(model, b, chunk)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_chunked_loss_and_gradients_equal_hfs_in_fp32(chunk):
    model, b = tiny(), batch()
    ref, gref = loss_and_grads(model, b, 0)
    out, g = loss_and_grads(model, b, chunk)
    assert torch.allclose(out, ref, rtol=0, atol=1e-6), (out, ref)
    assert g.keys() == gref.keys() and len(g) == len(list(model.parameters()))
    for n in g:
        assert torch.allclose(g[n], gref[n], rtol=1e-5, atol=1e-7), n


def test_chunked_loss_under_bf16_autocast_matches_hfs():
    model, b = tiny(), batch()
    ref, gref = loss_and_grads(model, b, 0, "bf16")
    out, g = loss_and_grads(model, b, 4, "bf16")
    assert torch.allclose(out, ref, rtol=1e-3), (out, ref)
    for n in g:                     # bf16 rounding differs where chunks sum: compare as vectors
        assert (g[n] - gref[n]).norm() <= 1e-2 * gref[n].norm(), n


def test_through_peft_lora_only_the_adapters_get_the_same_gradients():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert isinstance(hf_model(model), Qwen2ForCausalLM)
    b = batch()
    ref, gref = loss_and_grads(model, b, 0)
    out, g = loss_and_grads(model, b, 3)
    assert torch.allclose(out, ref, atol=1e-6) and g.keys() == gref.keys()
    assert g and all("lora_" in n for n in g)
    for n in g:
        assert torch.allclose(g[n], gref[n], rtol=1e-5, atol=1e-7), n


def test_no_targets_is_nan_as_hfs_mean_over_nothing():
    model, b = tiny(), batch()
    b["labels"] = torch.full_like(b["labels"], -100)
    assert torch.isnan(lm_loss(model, b, 4)) and torch.isnan(lm_loss(model, b, 0))


def test_a_negative_chunk_is_a_config_error():
    from smf_sweep.stage import TrainConfig

    with pytest.raises(ValueError, match="loss_chunk must be >= 0"):
        TrainConfig(loss_chunk=-1)


@pytest.mark.parametrize("method, mcfg", [("smf", {**SMF_NULL, "lr": 1e-2}), ("lora", {}), ("full", {})],
                         ids=["smf", "lora", "full"])
def test_each_methods_trial_is_unchanged_by_the_chunked_loss(tiny_world, tmp_path, monkeypatch, method, mcfg):
    """A real trial (train_worker: the method's stages, the loop, the probes) with loss_chunk 0 and 16:
    the same losses at every step and the same probes after, within float tolerance; the chunked
    trial did take the chunked path (and the other did not)."""
    import smf_sweep.lm_loss as L

    calls, ce = [], L._ce_sum
    monkeypatch.setattr(L, "_ce_sum", lambda head, h, y: calls.append(h.shape[0]) or ce(head, h, y))
    mcfg = {k: v for k, v in mcfg.items() if k != "lr"}
    runs = {}
    for chunk in (0, 16):
        calls.clear()
        reports = []
        cfg = _config(tiny_world, tmp_path / str(chunk), method, mcfg, "fp32", lr=1e-2 if method == "smf" else 1e-3,
                      loss_chunk=chunk)
        cfg["curves"] = {"every": 0}
        final = train_worker(cfg, reporter=lambda m, c: reports.append(m))
        runs[chunk] = ([r["train/loss"] for r in reports if "train/loss" in r], final)
        assert (max(calls, default=0) == 16) == bool(chunk), calls[:8]
    (l0, f0), (l16, f16) = runs[0], runs[16]
    assert len(l0) >= 2 and l0 == pytest.approx(l16, rel=1e-5)
    for t in ("medmcqa", "triviaqa", "wikitext"):
        assert f16[f"after/{t}"] == pytest.approx(f0[f"after/{t}"], rel=1e-4), t
