"""Device of initialisation (issue 12): the memory's init draws where its generator lives, never
hands an initialiser a generator on another device than the tensor (the CUDA crash "Expected a
'cuda' device type for generator"), leaves the parameters on the model's device, and gives the same
values for the same seed on every device. Without a GPU, `meta` stands in for a non-CPU device."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from smf_sweep.memory import SELECTORS, MemoryConfig, ProductKeyMemory, insert_memory, memory_params

SMALL = dict(layers=(0, 1), n_keys=8, heads=2, k=4, d_k=16)
INITS = ("uniform_", "normal_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
         "trunc_normal_", "zeros_", "ones_", "constant_")


def tiny_qwen(device="cpu"):
    cfg = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    with torch.device(device):
        return Qwen2ForCausalLM(cfg).eval()


@pytest.fixture
def init_calls(monkeypatch):
    """Record (tensor device, generator device) of every torch.nn.init call."""
    calls = []
    for name in INITS:
        orig = getattr(nn.init, name)

        def rec(tensor, *args, _orig=orig, **kw):
            g = kw.get("generator")
            calls.append((tensor.device, g.device if g is not None else None))
            return _orig(tensor, *args, **kw)
        monkeypatch.setattr(nn.init, name, rec)
    return calls


def _mismatched(calls):
    return [(t, g) for t, g in calls if g is not None and t.type != g.type]


def test_cpu_generator_never_meets_a_tensor_on_another_device(init_calls):
    mem = ProductKeyMemory(24, MemoryConfig(**SMALL), device="meta")  # stands in for CUDA
    mem.reset_parameters(torch.Generator(device="cpu").manual_seed(0))
    assert init_calls, "reset_parameters called no initialiser"
    assert not _mismatched(init_calls), f"initialiser got a generator on another device: {init_calls}"
    assert {p.device.type for p in mem.parameters()} == {"meta"}


def test_insert_memory_keeps_the_models_device_and_draws_consistently(init_calls):
    for device in ("cpu", "meta"):
        model = tiny_qwen(device)
        insert_memory(model, MemoryConfig(**SMALL), generator=torch.Generator().manual_seed(0))
        assert {p.device.type for p in memory_params(model)} == {device}
    assert not _mismatched(init_calls)


def _reference_init(mem: ProductKeyMemory, g: torch.Generator) -> dict:
    """The init as it was drawn before the fix (CPU): draws in place, in the same order."""
    ref = ProductKeyMemory(mem.d, MemoryConfig(**SMALL, v_dim=mem.v_dim))
    with torch.no_grad():
        nn.init.uniform_(ref.address.keys, -ref.address.d_k**-0.5, ref.address.d_k**-0.5, generator=g)
        nn.init.normal_(ref.values, 0.0, ref.v_dim**-0.5, generator=g)
        nn.init.xavier_uniform_(ref.address.query.weight, generator=g)
        nn.init.normal_(ref.w1.weight, 0.0, ref.d**-0.5, generator=g)
        nn.init.normal_(ref.w2.weight, 0.0, ref.d**-0.5, generator=g)
        for lin in (ref.address.query, ref.w1, ref.w2):
            b = lin.in_features**-0.5
            nn.init.uniform_(lin.bias, -b, b, generator=g)
    return ref.state_dict()


def test_cpu_init_is_unchanged_so_cached_retrofits_keep_their_meaning():
    mem = ProductKeyMemory(24, MemoryConfig(**SMALL))
    mem.reset_parameters(torch.Generator().manual_seed(7))
    ref = _reference_init(mem, torch.Generator().manual_seed(7))
    for k, v in mem.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_random_selector_draws_on_its_generators_device_and_returns_on_the_counts_device():
    counts = torch.tensor([0, 3, 1, 0, 2])
    s = SELECTORS["random"](counts.to("meta"), None, generator=torch.Generator().manual_seed(0))
    assert s.device.type == "meta"
    s = SELECTORS["random"](counts, None, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(s[[0, 3]]).all() and torch.isfinite(s[[1, 2, 4]]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_init_equals_cpu_init_for_the_same_seed():
    inits = {}
    for device in ("cpu", "cuda"):
        model = tiny_qwen(device)
        insert_memory(model, MemoryConfig(**SMALL), generator=torch.Generator().manual_seed(3))
        assert {p.device.type for p in memory_params(model)} == {device}
        inits[device] = [p.detach().cpu() for p in memory_params(model)]
    assert all(torch.equal(a, b) for a, b in zip(inits["cpu"], inits["cuda"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_smf_setup_on_cuda(tmp_path):
    """The crash of issue 12: SMF setup with the model on CUDA (zero_values: no retrofit)."""
    from smf_sweep.methods import METHODS, SetupContext
    from smf_sweep.train_loop import TrainConfig

    model = tiny_qwen("cuda")
    cfg = METHODS["smf"].Config(layers=(1,), n_keys=8, heads=2, k=4, d_k=16, top_t=4, mode="zero_values",
                                selector="random")
    ctx = SetupContext(None, TrainConfig(lr=1e-2, max_steps=2), 2, torch.device("cuda"), cache_dir=tmp_path)
    setup = METHODS["smf"].setup(model, cfg, ctx)
    assert {p.device.type for p in memory_params(setup.model)} == {"cuda"}
    ids = torch.randint(0, 100, (2, 7), device="cuda")
    setup.model(ids).logits.sum().backward()
    setup.hooks.after_forward({"attention_mask": torch.ones_like(ids)})
    setup.hooks.before_step()
