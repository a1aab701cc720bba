"""Access counting (padding masked or not) and background statistics."""
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from smf_sweep.memory import (BACKGROUND_FILE, AccessRecorder, BackgroundStats, MemoryConfig, StaleBackground,
                              compute_background, count_accesses, insert_memory)

SMALL = dict(layers=(0, 1), n_keys=8, heads=2, k=4, d_k=16)
N = 64




def tiny_mem_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = Qwen2ForCausalLM(cfg).eval()
    insert_memory(model, MemoryConfig(**{**SMALL, **kw}))
    return model


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (3, 6), generator=g)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    return {"input_ids": ids, "attention_mask": mask}


def test_count_accesses_by_hand():
    idx = torch.tensor([[[[0, 1], [1, 2]], [[3, 3], [0, 5]]]])  # (B=1, T=2, H=2, k=2)
    assert count_accesses(idx, 6).tolist() == [2, 2, 1, 2, 0, 1]
    pad = torch.tensor([[1, 0]])
    assert count_accesses(idx, 6, pad).tolist() == [1, 2, 1, 0, 0, 0]
    assert count_accesses(idx, 6, pad, count_padding=True).tolist() == [2, 2, 1, 2, 0, 1]
    with pytest.raises(ValueError):
        count_accesses(idx, 6, torch.ones(1, 3))


def test_recorder_equals_bincount_over_real_tokens():
    model = tiny_mem_model()
    b = batch()
    with AccessRecorder(model) as rec:
        with torch.no_grad():
            model(**b)
        idx = rec.indices()
        counts = rec.counts(b["attention_mask"])
    assert set(counts) == {0, 1}
    m = b["attention_mask"].bool()
    for layer in (0, 1):
        assert idx[layer].shape == (3, 6, 2, 4) and not idx[layer].requires_grad
        ref = torch.zeros(N, dtype=torch.long)
        for bi in range(3):
            for t in range(6):
                if m[bi, t]:
                    for i in idx[layer][bi, t].flatten().tolist():
                        ref[i] += 1
        assert torch.equal(counts[layer], ref)
        assert counts[layer].sum() == m.sum() * 2 * 4  # tokens × heads × k
    with pytest.raises(RuntimeError):  # records are consumed
        rec.counts(b["attention_mask"])


def test_count_padding_counts_pads_too():
    model = tiny_mem_model(count_padding=True)  # default taken from the MemoryConfig
    b = batch()
    with AccessRecorder(model) as rec:
        with torch.no_grad():
            model(**b)
        idx = rec.indices()
        counts = rec.counts(b["attention_mask"])
    for layer in (0, 1):
        assert torch.equal(counts[layer], torch.bincount(idx[layer].flatten(), minlength=N))
        assert counts[layer].sum() == 3 * 6 * 2 * 4


def test_recorder_keeps_no_graph_and_detaches_on_close():
    model = tiny_mem_model()
    rec = AccessRecorder(model)
    model(**batch())
    assert all(not t.requires_grad and t.grad_fn is None for t in rec.indices().values())
    rec.close()
    model(**batch())
    assert rec.indices() == {}


def test_background_update_by_hand():
    model = tiny_mem_model()
    bg = BackgroundStats.empty(model)
    c = [torch.zeros(N, dtype=torch.long) for _ in range(3)]
    c[0][[1, 2]] = torch.tensor([3, 1])
    c[1][[2, 5]] = torch.tensor([4, 2])
    c[2][[2]] = 7
    for ci in c:
        bg.update({0: ci, 1: ci * 0})
    lb = bg.layer(0)
    assert lb.n == 3 and bg.layer(1).df.sum() == 0
    assert lb.df[[1, 2, 5, 0]].tolist() == [1, 3, 1, 0]
    assert lb.total[[1, 2, 5, 0]].tolist() == [3, 12, 2, 0]


def test_compute_background_matches_per_batch_counts(tmp_path):
    model = tiny_mem_model()
    model.train()
    batches = [batch(s) for s in range(3)]
    bg = compute_background(model, batches)
    assert model.training  # mode restored
    assert bg.n == 3 and not bg.count_padding
    with AccessRecorder(model) as rec:
        per = []
        for b in batches:
            with torch.no_grad():
                model.eval()(**b)
            per.append(rec.counts(b["attention_mask"]))
    for layer in (0, 1):
        assert torch.equal(bg.df[layer], sum((p[layer] > 0).long() for p in per))
        assert torch.equal(bg.total[layer], sum(p[layer] for p in per))
    assert compute_background(model, batches, max_batches=2).n == 2
    assert compute_background(model, batches, count_padding=True).total[0].sum() == 3 * 18 * 8

    path = tmp_path / "ckpt" / BACKGROUND_FILE
    bg.save(path)
    back = BackgroundStats.load(path)
    assert back.n == 3 and back.fingerprint == bg.fingerprint and torch.equal(back.df[1], bg.df[1])
    back.check(model)


def test_fingerprint_detects_changed_addressing_only():
    model = tiny_mem_model()
    bg = compute_background(model, [batch()])
    w = model.model.layers[1].mlp
    with torch.no_grad():
        w.memory.values.add_(1.0)  # values do not change addressing
        w.memory.w2.weight.add_(1.0)
    bg.check(model)
    with torch.no_grad():
        w.memory.address.keys[0, 0] += 1e-3
    with pytest.raises(StaleBackground):
        bg.check(model)
    bg2 = compute_background(model, [batch()])
    with torch.no_grad():
        w.memory.address.query.bias[0] += 1e-3
    with pytest.raises(StaleBackground):
        bg2.check(model)
