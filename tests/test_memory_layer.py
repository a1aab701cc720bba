"""Memory layer: product-key lookup, output, dtypes, parameter count, config validation."""
import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from smf_sweep.memory import MemoryConfig, ProductKeyMemory, insert_memory, memory_param_count

SMALL = dict(layers=(1,), n_keys=8, heads=2, k=4, d_k=16)




def tiny_qwen(seed=0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_product_keys_equal_brute_force_topk(seed):
    cfg = MemoryConfig(**SMALL)
    g = torch.Generator().manual_seed(seed)
    mem = ProductKeyMemory(24, cfg)
    mem.reset_parameters(g)
    x = torch.randn(2, 5, 24, generator=g)
    scores, idx = mem.address(x)  # (B, T, H, k)

    H, n, half = cfg.heads, cfg.n_keys, cfg.d_k // 2
    q = mem.address.query(x).view(2, 5, H, cfg.d_k)
    keys = mem.address.keys.view(H, 2, n, half)
    # full key of slot i1*n + i2 = concat(sub-key i1 of half 1, sub-key i2 of half 2)
    full = torch.cat([keys[:, 0, :, None, :].expand(H, n, n, half),
                      keys[:, 1, None, :, :].expand(H, n, n, half)], dim=-1).reshape(H, n * n, cfg.d_k)
    all_scores = torch.einsum("bthd,hnd->bthn", q, full)  # (B, T, H, N)
    bf_scores, bf_idx = all_scores.topk(cfg.k, dim=-1)
    assert torch.equal(idx.sort(-1).values, bf_idx.sort(-1).values)
    torch.testing.assert_close(scores, bf_scores, rtol=1e-5, atol=1e-5)
    assert idx.max() < cfg.n_slots and idx.min() >= 0


def test_output_equals_hand_gather_and_weighted_sum():
    cfg = MemoryConfig(**SMALL, v_dim=12)
    torch.manual_seed(5)
    mem = ProductKeyMemory(24, cfg)
    x = torch.randn(2, 3, 24)
    out = mem(x)
    scores, idx = mem.address(x)
    B, T = 2, 3
    expected = torch.empty(B, T, 24)
    for b in range(B):
        for t in range(T):
            y = torch.zeros(12)
            for h in range(cfg.heads):  # heads are SUMMED
                w = torch.softmax(scores[b, t, h], dim=0)
                for j in range(cfg.k):
                    y += w[j] * mem.values[idx[b, t, h, j]]
            gate = F.silu(x[b, t] @ mem.w1.weight.T + mem.w1.bias)
            expected[b, t] = (y * gate) @ mem.w2.weight.T + mem.w2.bias
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_values_and_addressing():
    mem = ProductKeyMemory(24, MemoryConfig(**SMALL))
    mem(torch.randn(1, 4, 24)).sum().backward()
    assert mem.values.grad.abs().sum() > 0
    assert mem.address.keys.grad.abs().sum() > 0  # through the softmax weights
    assert mem.address.query.weight.grad.abs().sum() > 0


def test_init_statistics():
    cfg = MemoryConfig(layers=(0,), n_keys=32, heads=2, k=4, d_k=64)
    mem = ProductKeyMemory(64, cfg)
    assert mem.address.keys.abs().max() <= 64**-0.5
    assert abs(mem.values.std().item() - 64**-0.5) < 0.01
    assert abs(mem.w1.weight.std().item() - 64**-0.5) < 0.01


def test_values_stay_fp32_in_bf16_model():
    model = tiny_qwen()
    ws = insert_memory(model, MemoryConfig(**SMALL))
    before = ws[0].memory.values.detach().clone()
    param = ws[0].memory.values
    model.to(torch.bfloat16)
    mem = ws[0].memory
    assert mem.values.dtype == torch.float32 and mem.values is param  # same Parameter object
    assert torch.equal(mem.values, before)  # no precision lost through a bf16 round trip
    assert mem.w1.weight.dtype == torch.bfloat16 and mem.address.keys.dtype == torch.bfloat16
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    logits = model(torch.randint(0, 100, (2, 6))).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    model.bfloat16().half().float()
    assert mem.values.dtype == torch.float32 and torch.equal(mem.values, before)


def test_insert_into_bf16_model_keeps_values_fp32():
    model = tiny_qwen().to(torch.bfloat16)
    w = insert_memory(model, MemoryConfig(**SMALL))[0]
    assert w.memory.values.dtype == torch.float32 and w.memory.w2.weight.dtype == torch.bfloat16
    assert w.alpha.dtype == torch.bfloat16


def test_param_count_on_qwen25_05b_shape():
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    ws = insert_memory(model, MemoryConfig())
    assert [w.layer_idx for w in ws] == [6, 12, 18]
    counts = [sum(p.numel() for p in w.memory.parameters()) for w in ws]
    assert counts == [17_337_088] * 3 == [memory_param_count(896, MemoryConfig())] * 3  # ≈17.3M (SMF_SPEC §2)
    assert ws[0].memory.values.shape == (16384, 896)


@pytest.mark.parametrize("bad", [dict(layers=()), dict(layers=(1, 1)), dict(layers=(-1,)), dict(n_keys=0),
                                 dict(k=200), dict(d_k=15), dict(mode="dense"), dict(v_dim=0),
                                 dict(alpha_init=float("nan")), dict(count_padding=1), dict(heads=1.5)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        MemoryConfig(**bad)


def test_config_roundtrip_and_unknown_keys():
    cfg = MemoryConfig(layers=[3, 1], n_keys=16)
    assert cfg.layers == (3, 1) and cfg.n_slots == 256
    assert MemoryConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        MemoryConfig.from_dict({**cfg.to_dict(), "knn": 3})


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_autocast_bf16_training_keeps_fp32_values_and_grads(model_dtype):
    model = tiny_qwen().to(model_dtype)
    w = insert_memory(model, MemoryConfig(**SMALL))[0]
    ids = torch.randint(0, 100, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # embedding_bag is outside autocast's lists
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    v = w.memory.values
    assert v.dtype == v.grad.dtype == torch.float32 and v.grad.abs().sum() > 0
