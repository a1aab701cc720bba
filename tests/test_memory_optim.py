"""Row-masked optimizers and SparseUpdater: rows outside the selection must not move (except adamw_leaky)."""
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from smf_sweep.memory import (OPTIMIZERS, SELECTORS, MemoryConfig, SparseUpdater, compute_background,
                              freeze_for_sparse, insert_memory, select_rows)

T_ROWS = 5  # top-t per layer; a micro-batch accesses ~40 of the 64 slots
MICRO = 2  # micro-batches per optimizer step
STEPS = 20




def tiny_mem_model():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = Qwen2ForCausalLM(cfg)
    insert_memory(model, MemoryConfig(layers=(0, 1), n_keys=8, heads=2, k=4, d_k=16),
                  generator=torch.Generator().manual_seed(0))
    return model


def batch(g):
    ids = torch.randint(0, 100, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def setup(opt_name, granularity, selector="kl", **opt_kw):
    model = tiny_mem_model()
    g = torch.Generator().manual_seed(1)
    bg = compute_background(model, [batch(g) for _ in range(4)])
    values = freeze_for_sparse(model)
    lr = 0.5 if opt_name == "sgd" else 1e-2
    opt = OPTIMIZERS[opt_name](values, lr=lr, **opt_kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))  # warmup
    upd = SparseUpdater(model, opt, selector, T_ROWS, granularity, bg,
                        generator=torch.Generator().manual_seed(3) if selector == "random" else None)
    return model, opt, sched, upd, bg, g


def snapshot(model, opt):
    vals = {w: p.detach().clone() for w, p in enumerate(opt.param_groups[0]["params"])}
    state = {w: {k: v.clone() for k, v in opt.state[p].items()} for w, p in enumerate(opt.param_groups[0]["params"])}
    return vals, state


@pytest.mark.parametrize("dense", [False, True], ids=["gathered", "dense"])   # dense: the accelerator path
@pytest.mark.parametrize("granularity", ["micro", "step"])
@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_unselected_rows_bit_identical(opt_name, granularity, dense):
    model, opt, sched, upd, bg, g = setup(opt_name, granularity, weight_decay=0.1, dense=dense)
    params = opt.param_groups[0]["params"]
    layer_of = {id(p): i for i, p in upd.values.items()}
    moved_total = 0
    for step in range(STEPS):
        vals, state = snapshot(model, opt)
        for _ in range(MICRO):
            b = batch(g)
            loss = model(**b).loss / MICRO
            counts = upd.after_forward(b["attention_mask"])
            before = [None if p.grad is None else p.grad.clone() for p in params]
            loss.backward()
            if granularity == "micro":  # this micro-batch's gradient is masked to its own selection
                for p, g0 in zip(params, before):
                    i = layer_of[id(p)]
                    own = select_rows(SELECTORS["kl"](counts[i], bg.layer(i)), T_ROWS)
                    new = p.grad if g0 is None else p.grad - g0
                    assert own.sum() <= T_ROWS
                    assert (new[~own] == 0).all() and new[own].abs().sum() > 0
        rows = upd.before_step()
        for i, p in upd.values.items():  # what gradient clipping sees: zero outside the step's rows
            assert (p.grad[~upd.last_rows[i]] == 0).all()
        opt.step()
        sched.step()
        opt.zero_grad()
        for w, p in enumerate(params):
            i = layer_of[id(p)]
            sel = upd.last_rows[i]
            assert int(rows[i]) == int(sel.sum())
            if granularity == "micro":
                assert len(upd.last_micro_rows) == MICRO
                assert torch.equal(sel, upd.last_micro_rows[0][i] | upd.last_micro_rows[1][i])
                assert all(m[i].sum() <= T_ROWS for m in upd.last_micro_rows)
                assert sel.sum() <= MICRO * T_ROWS
            else:
                assert sel.sum() <= T_ROWS
            assert torch.equal(p.detach()[~sel], vals[w][~sel])  # BIT-identical outside the selection
            for k, v in opt.state[p].items():  # ... optimizer state too
                if k in state[w]:
                    assert torch.equal(v[~sel], state[w][k][~sel]), k
                else:
                    assert (v[~sel] == 0).all(), k
            moved = (p.detach() != vals[w]).any(1)
            assert not (moved & ~sel).any()
            moved_total += int(moved.sum())
    assert moved_total > STEPS  # the selected rows do train
    upd.close()


def test_adamw_leaky_moves_unselected_rows():
    """QWEN's optimizer: AdamW on masked gradients. Momentum moves rows selected at earlier steps."""
    model, opt, sched, upd, bg, g = setup("adamw_leaky", "micro")
    params = opt.param_groups[0]["params"]
    leaked = 0
    for step in range(STEPS):
        vals, _ = snapshot(model, opt)
        for _ in range(MICRO):
            b = batch(g)
            loss = model(**b).loss / MICRO
            upd.after_forward(b["attention_mask"])
            loss.backward()
        upd.before_step()
        opt.step()
        opt.zero_grad()
        for w, (i, p) in enumerate(upd.values.items()):
            assert p is params[w]
            leaked += int(((p.detach() != vals[w]).any(1) & ~upd.last_rows[i]).sum())
    assert leaked > 0


def test_adamw_leaky_weight_decay_shrinks_never_selected_rows():
    p = torch.nn.Parameter(torch.ones(4, 3))
    opt = OPTIMIZERS["adamw_leaky"]([p], lr=0.1, weight_decay=0.1)
    p.grad = torch.ones(4, 3)
    opt.set_rows({p: torch.tensor([True, False, False, False])})
    opt.step()
    assert (p.detach()[1:] < 1).all()  # rows 1..3 were never selected and still decayed
    q = torch.nn.Parameter(torch.ones(4, 3))
    opt = OPTIMIZERS["adamw"]([q], lr=0.1, weight_decay=0.1)
    q.grad = torch.ones(4, 3)
    opt.set_rows({q: torch.tensor([True, False, False, False])})
    opt.step()
    assert (q.detach()[1:] == 1).all() and (q.detach()[0] < 1).all()


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_row_adamw_with_all_rows_matches_torch_adamw(wd):
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(6, 4))
    b = torch.nn.Parameter(a.detach().clone())
    ours = OPTIMIZERS["adamw"]([a], lr=1e-2, weight_decay=wd)
    ref = torch.optim.AdamW([b], lr=1e-2, weight_decay=wd, foreach=False)
    for _ in range(5):
        grad = torch.randn(6, 4)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.set_rows({a: torch.ones(6, dtype=torch.bool)})
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_row_adamw_state_follows_its_rows_device_when_loaded(tmp_path):
    """A checkpoint's per-row step counts (N,) come back on their parameter's device, as exp_avg and
    exp_avg_sq do (torch's load_state_dict leaves anything keyed "step" where it was: on a GPU, the
    device of the rank that saved it). The meta device stands in for "another device than the saved
    one": the parameter is there, the checkpoint on the CPU."""
    from smf_sweep.stage import TorchStepper

    p = torch.nn.Parameter(torch.zeros(4, 3))
    opt = OPTIMIZERS["adamw"]([p], lr=0.1)
    p.grad = torch.ones(4, 3)
    opt.set_rows({p: torch.tensor([True, False, True, False])})
    opt.step()
    saved = opt.state_dict()
    assert saved["state"][0]["step"].tolist() == [1, 0, 1, 0]
    q = torch.nn.Parameter(torch.zeros(4, 3, device="meta"))
    other = OPTIMIZERS["adamw"]([q], lr=0.1)
    other.load_state_dict(saved)
    assert {k: v.device.type for k, v in other.state[q].items()} == {"step": "meta", "exp_avg": "meta",
                                                                    "exp_avg_sq": "meta"}
    again = OPTIMIZERS["adamw"]([torch.nn.Parameter(torch.zeros(4, 3))], lr=0.1)
    again.load_state_dict(saved)                                 # same device: the counts as saved
    assert next(iter(again.state.values()))["step"].tolist() == [1, 0, 1, 0]

    saver = TorchStepper([p], opt, lambda step: 1.0, grad_clip=None)      # the SMF trial's checkpoint
    saver.save(tmp_path)
    q = torch.nn.Parameter(torch.zeros(4, 3, device="meta"))
    loader = TorchStepper([q], OPTIMIZERS["adamw"]([q], lr=0.1), lambda step: 1.0, grad_clip=None)
    loader.load(tmp_path)                                        # the resumed worker's, on its own device
    assert {v.device.type for v in loader.opt.state[q].values()} == {"meta"}


def test_row_adamw_bias_correction_is_per_row():
    p = torch.nn.Parameter(torch.zeros(2, 3))
    opt = OPTIMIZERS["adamw"]([p], lr=0.1)
    for _ in range(4):  # row 0 steps 4 times
        p.grad = torch.full((2, 3), 2.0)
        opt.set_rows({p: torch.tensor([True, False])})
        opt.step()
    assert opt.state[p]["step"].tolist() == [4, 0] and (p.detach()[1] == 0).all()
    p.grad = torch.full((2, 3), 2.0)
    opt.set_rows({p: torch.tensor([False, True])})
    opt.step()
    # row 1's first step: bias-corrected m/sqrt(v) = g/|g| = 1, so the update is exactly ≈ -lr
    torch.testing.assert_close(p.detach()[1], torch.full((3,), -0.1))
    sd = opt.state_dict()
    opt2 = OPTIMIZERS["adamw"]([p], lr=0.1)
    opt2.load_state_dict(sd)
    assert opt2.state[p]["step"].tolist() == [4, 1]


def test_row_sgd_matches_formula_and_masks_are_required():
    p = torch.nn.Parameter(torch.ones(3, 2))
    opt = OPTIMIZERS["sgd"]([p], lr=0.5, weight_decay=0.2)
    p.grad = torch.full((3, 2), 4.0)
    with pytest.raises(RuntimeError, match="set_rows"):
        opt.step()
    opt.set_rows({p: torch.tensor([False, True, False])})
    opt.step()
    assert (p.detach()[[0, 2]] == 1).all()
    torch.testing.assert_close(p.detach()[1], torch.full((2,), 1 - 0.5 * (4 + 0.2)))
    with pytest.raises(RuntimeError, match="set_rows"):  # masks are consumed by a step
        opt.step()
    with pytest.raises(ValueError):
        opt.set_rows({p: torch.ones(2, dtype=torch.bool)})
    assert all(issubclass(OPTIMIZERS[n], torch.optim.Optimizer) for n in OPTIMIZERS)


def test_updater_validates_its_inputs():
    model = tiny_mem_model()
    values = freeze_for_sparse(model)
    opt = OPTIMIZERS["sgd"](values)
    with pytest.raises(ValueError, match="background"):
        SparseUpdater(model, opt, "kl", 4, "micro", None)
    with pytest.raises(ValueError, match="Generator"):
        SparseUpdater(model, opt, "random", 4, "micro")
    with pytest.raises(ValueError, match="granularity"):
        SparseUpdater(model, opt, "tf", 4, "batch")
    g = torch.Generator().manual_seed(0)
    bg = compute_background(model, [batch(g)], count_padding=True)
    with pytest.raises(ValueError, match="count_padding"):
        SparseUpdater(model, opt, "kl", 4, "step", bg)
    upd = SparseUpdater(model, opt, "random", 4, "step", generator=g)
    b = batch(g)
    model(**b).loss.backward()
    upd.after_forward(b["attention_mask"])
    assert all(0 < n <= 4 for n in upd.before_step().values())
    opt.step()
    upd.close()


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_dense_rows_path_matches_the_gathered_one(opt_name):
    """The accelerator path (every row computed, selected ones kept, no host sync) gives the
    gathered path's values and state (up to vectorised pow/sqrt rounding)."""
    g = torch.Generator().manual_seed(2)
    w0 = torch.randn(32, 8, generator=g)
    ps = [torch.nn.Parameter(w0.clone()) for _ in range(2)]
    opts = [OPTIMIZERS[opt_name]([p], lr=1e-2, weight_decay=0.1, dense=d) for p, d in zip(ps, (False, True))]
    for _ in range(6):
        grad = torch.randn(32, 8, generator=g)
        rows = torch.rand(32, generator=g) < 0.3                                  # (N,)
        for p, o in zip(ps, opts):
            p.grad = grad.masked_fill(~rows[:, None], 0)
            o.set_rows({p: rows})
            o.step()
    torch.testing.assert_close(ps[1].detach(), ps[0].detach(), rtol=1e-6, atol=1e-7)
    for k, v in opts[0].state[ps[0]].items():
        torch.testing.assert_close(opts[1].state[ps[1]][k], v, rtol=1e-6, atol=1e-7)
