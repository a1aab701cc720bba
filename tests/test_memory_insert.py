"""Insertion modes, structural discovery, freezing, save/load of the memory parameters."""
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

from smf_sweep.memory import (MemoryConfig, MemoryMLP, freeze_for_retrofit, freeze_for_sparse, insert_memory,
                              load_memory, memory_layers, memory_params, save_memory)

SMALL = dict(layers=(0, 1), n_keys=8, heads=2, k=4, d_k=16)




def tiny_qwen(seed=0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).eval()


IDS = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def logits(model):
    return model(IDS).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_values_is_exactly_function_preserving(dtype):
    model = tiny_qwen().to(dtype)
    base = logits(model)
    insert_memory(model, MemoryConfig(**SMALL, mode="zero_values"))
    assert torch.equal(logits(model), base)


def test_zero_values_still_trains_values():
    model = tiny_qwen()
    ws = insert_memory(model, MemoryConfig(**SMALL, mode="zero_values"))
    freeze_for_sparse(model)
    model(IDS).logits.square().mean().backward()
    assert ws[0].memory.values.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["additive", "replace"])
def test_additive_and_replace_change_the_model(mode):
    model = tiny_qwen()
    base = logits(model)
    insert_memory(model, MemoryConfig(**SMALL, mode=mode))
    assert not torch.allclose(logits(model), base, atol=1e-6)


def test_additive_is_ffn_plus_alpha_mem_and_replace_drops_ffn():
    model = tiny_qwen()
    ffn = model.model.layers[1].mlp
    w = insert_memory(model, MemoryConfig(**SMALL, mode="additive", alpha_init=0.25))[1]
    assert w.ffn is ffn and w.alpha.item() == 0.25
    x = torch.randn(1, 3, 32)
    torch.testing.assert_close(w(x), ffn(x) + 0.25 * w.memory(x))
    model2 = tiny_qwen()
    w2 = insert_memory(model2, MemoryConfig(**SMALL, mode="replace"))[0]
    assert w2.ffn is None and w2.alpha is None
    assert not any(isinstance(m, Qwen2MLP) for m in w2.modules())
    torch.testing.assert_close(w2(x), w2.memory(x))


def test_memory_layers_found_by_type_not_name():
    model = tiny_qwen()
    ws = insert_memory(model, MemoryConfig(**SMALL))
    holder = torch.nn.Module()
    holder.renamed = model  # every parameter name changes; discovery must not
    assert memory_layers(holder) == ws and [w.layer_idx for w in ws] == [0, 1]
    assert all(isinstance(w, MemoryMLP) for w in ws)
    with pytest.raises(ValueError, match="already"):
        insert_memory(model, MemoryConfig(**SMALL))
    with pytest.raises(ValueError, match="range"):
        insert_memory(tiny_qwen(), MemoryConfig(**{**SMALL, "layers": (2,)}))


def test_freeze_for_sparse_and_retrofit():
    model = tiny_qwen()
    ws = insert_memory(model, MemoryConfig(**SMALL))
    values = freeze_for_sparse(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 2 and all(any(p is v for v in values) for p in trainable)
    assert values[0] is ws[0].memory.values
    params = freeze_for_retrofit(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in params} == {id(p) for p in memory_params(model)}
    assert any(p is ws[0].alpha for p in params) and any(p is ws[0].memory.address.keys for p in params)
    assert not any(p.requires_grad for p in ws[0].ffn.parameters())  # the wrapped FFN is base model
    assert not model.lm_head.weight.requires_grad


def test_save_load_roundtrip(tmp_path):
    model = tiny_qwen(seed=0)
    cfg = MemoryConfig(**SMALL, mode="additive", alpha_init=0.5)
    insert_memory(model, cfg, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        memory_layers(model)[0].memory.values.add_(1.0)  # trained-looking values
    out = logits(model)
    save_memory(model, tmp_path / "mem.pt")
    sd = torch.load(tmp_path / "mem.pt", weights_only=True)
    assert not any(k.startswith("ffn.") for k in sd["layers"][0])  # base weights are not copied
    fresh = tiny_qwen(seed=0)  # same base weights, no memory
    ws = load_memory(fresh, tmp_path / "mem.pt")
    assert ws[0].cfg == cfg
    assert torch.equal(logits(fresh), out)
    with pytest.raises(ValueError, match="differs"):
        other = tiny_qwen()
        insert_memory(other, MemoryConfig(**{**SMALL, "k": 2}))
        load_memory(other, tmp_path / "mem.pt")


def test_generator_makes_init_reproducible():
    a, b = tiny_qwen(), tiny_qwen()
    insert_memory(a, MemoryConfig(**SMALL), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global RNG must not matter
    insert_memory(b, MemoryConfig(**SMALL), generator=torch.Generator().manual_seed(7))
    assert torch.equal(logits(a), logits(b))
