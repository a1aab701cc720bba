"""The invariants that make the GPU path checkable on a CPU (issue 12), for every method:

- null trial: a trial whose optimizer cannot move the weights (lr 1e-30, 2 steps) shows no effect on
  any probe, in fp32 and in the GPU's regime (bf16 autocast over fp32 weights runs on a CPU too):
  neither at its end nor at any point of its learning–forgetting curve (curves.py), KL drift included;
- equal budget: every method sees the same examples and optimizer steps at the spec's effective
  batch, for any worker count (the two-worker runs through Ray Train are in test_ray_train.py);
- the precision regime is real and recorded: bf16 probes differ from fp32 ones, and a delta across
  regimes or probe versions is refused, never computed.
"""
from __future__ import annotations

import pytest
import torch

from smf_sweep.objectives import probe_delta
from smf_sweep.trial import TrialFailed, _compute_base, check_comparable
from smf_sweep.worker import train_worker

TASKS = ("medmcqa", "triviaqa", "wikitext")
# zero_values: the memory is function-preserving at init, so SMF's null trial starts from the base
# model itself (additive/replace change the function before training: that is the retrofit's drift)
SMF_NULL = {"layers": [1], "n_keys": 8, "heads": 2, "k": 4, "d_k": 16, "top_t": 6, "mode": "zero_values",
            "selector": "kl", "background_batches": 8, "retrofit": {"max_len": 64}}
METHODS = [("smf", SMF_NULL), ("lora", {}), ("full", {})]


def _probes(world) -> list[dict]:
    limits = {"medmcqa": 24, "triviaqa": 12, "wikitext": 8}
    return [{"task": t, "variant": "study", "source": f"world:{world}", "limit": limits[t], "options": {}} for t in TASKS]


CURVES = {"every": 1, "limit": 8, "kl_texts": 2, "kl_len": 16}


def _config(world, tmp_path, method, mcfg, precision, **train):
    from smf_sweep.objectives import Objectives
    return {"model": str(world / "model"), "method": method, "method_cfg": dict(mcfg), "seed": 0,
            "curves": CURVES, "objectives": Objectives().to_json(),
            "train": {"lr": 1e-30, "max_steps": 2, "micro_batch_size": 4, "effective_batch": 8, "max_len": 96,
                      "warmup_steps": 1, "log_every": 1, "train_limit": 64, "precision": precision, **train},
            "data": {"task": f"world:{world}", "retrofit": f"world:{world}"}, "probes": _probes(world),
            "probe_batch_size": 8, "cache_dir": str(tmp_path / "cache")}


@pytest.fixture(scope="module")
def base(tiny_world):
    return {p: _compute_base(str(tiny_world / "model"), _probes(tiny_world), 8, False, p) for p in ("fp32", "bf16")}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method, mcfg", METHODS, ids=[m for m, _ in METHODS])
def test_null_trial_shows_no_effect_on_any_probe(tiny_world, tmp_path, base, method, mcfg, precision):
    reports = []
    final = train_worker(_config(tiny_world, tmp_path, method, mcfg, precision), reporter=lambda m, c: reports.append(m))
    assert final.get("train/precision") == precision and "diverged" not in final, final
    assert final["train/optimizer_steps"] == 2
    b = base[precision]
    check_comparable(b, final)
    for t in TASKS:
        d = probe_delta(b[t], final[f"after/{t}"], b[f"{t}.hib"])
        assert abs(d) <= 1e-3, f"{method} {precision}: {t} moved by {d} ({b[t]} → {final[f'after/{t}']})"
    points = [m for m in reports if "curve/kl_general" in m]
    assert [m["curve/step"] for m in points] == [0, 1, 2]
    for m in points:
        assert abs(m["curve/kl_general"]) <= 1e-6, (method, precision, m)
        for t in TASKS:
            assert abs(m[f"curve/{t}/delta"]) <= 1e-3, (method, precision, t, m)
        assert abs(m["curve/forgetting"]) <= 1e-3 and abs(m["curve/medmcqa_gain_pp"]) <= 1e-3, m


def test_bf16_regime_is_real_and_recorded(base):
    """The regime changes the numbers (so mixing regimes would bias every delta) and each base
    record says which regime it is."""
    assert base["fp32"]["precision"] == "fp32" and base["bf16"]["precision"] == "bf16"
    assert base["fp32"]["wikitext"] != base["bf16"]["wikitext"]


def test_a_delta_across_regimes_or_probe_versions_is_refused(base):
    final = {"train/precision": "fp32", **{f"after/{t}.version": base["bf16"][f"{t}.version"] for t in TASKS}}
    with pytest.raises(TrialFailed, match="precision: base bf16 vs trial fp32"):
        check_comparable(base["bf16"], final)
    final = {"train/precision": "bf16", "after/medmcqa.version": "0-old"}
    with pytest.raises(TrialFailed, match="medmcqa: base v.* vs after v0-old"):
        check_comparable(base["bf16"], final)


def test_every_method_gets_the_same_examples_and_steps(tiny_world, tmp_path):
    """Same optimizer steps, examples and effective batch for SMF, LoRA and full FT (one worker)."""
    seen = {}
    for method, mcfg in METHODS:
        final = train_worker(_config(tiny_world, tmp_path, method, mcfg, "fp32", lr=1e-3, max_steps=3),
                             reporter=lambda m, c: None)
        seen[method] = (final["train/optimizer_steps"], final["train/examples_seen"], final["train/effective_batch"])
    assert set(seen.values()) == {(3, 24, 8)}, seen


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_each_optimizer_step_sees_the_same_examples_for_any_worker_count(tiny_world, workers):
    """The examples of optimizer step s (their set, per epoch) do not depend on the worker count;
    accumulation makes up the difference."""
    from smf_sweep.batching import Batcher, medmcqa_examples
    from smf_sweep.data import load_medmcqa
    from smf_sweep.models import load_tokenizer
    from smf_sweep.train_loop import TrainConfig

    tok = load_tokenizer(tiny_world / "model")
    ex = medmcqa_examples(load_medmcqa(f"world:{tiny_world}", "train", limit=40))
    cfg = TrainConfig(micro_batch_size=2, effective_batch=8)

    def steps(world: int) -> list[list[tuple]]:
        accum = cfg.accumulation(world)
        ranks = [Batcher(ex, tok, micro_batch_size=2, max_len=64, effective_batch=8, seed=3, rank=r, world_size=world)
                 for r in range(world)]
        assert all(b.steps_per_epoch == 40 // 8 for b in ranks)
        out = []
        for s in range(2 * ranks[0].steps_per_epoch):          # two epochs
            rows = []
            for b in ranks:
                for m in range(accum):
                    ids = b.micro_batch(s * accum + m)["input_ids"]      # (B, T)
                    rows += [tuple(r[r != tok.pad_token_id].tolist()) for r in ids]
            out.append(sorted(rows))
        return out

    assert steps(workers) == steps(1)


def test_effective_batch_that_does_not_divide_is_a_spec_error(tmp_path):
    from smf_sweep.spec import SpecError, parse_spec

    raw = {"name": "t", "model": str(tmp_path), "storage": str(tmp_path), "data": {"task": str(tmp_path),
           "retrofit": str(tmp_path), "triviaqa": str(tmp_path), "wikitext": str(tmp_path)},
           "train": {"micro_batch_size": 4, "effective_batch": 12},
           "methods": {"full": {"resources": {"workers": 2}}}}
    with pytest.raises(SpecError, match=r"methods\.full\.fixed: effective_batch 12 is not a multiple of "
                                        r"micro_batch_size 4 × 2 workers"):
        parse_spec(raw)
    raw["methods"]["full"]["resources"]["workers"] = 3
    raw["train"]["effective_batch"] = 24
    assert parse_spec(raw).train["effective_batch"] == 24


def test_auto_precision_resolves_once_per_sweep(tmp_path):
    from smf_sweep.spec import parse_spec

    raw = {"name": "t", "model": str(tmp_path), "storage": str(tmp_path), "data": {"task": str(tmp_path),
           "retrofit": str(tmp_path), "triviaqa": str(tmp_path), "wikitext": str(tmp_path)},
           "methods": {"lora": {}}}
    assert parse_spec(raw).train["precision"] == "fp32"
    raw["methods"]["full"] = {"resources": {"gpus_per_worker": 1}}
    assert parse_spec(raw).train["precision"] == "bf16"      # one GPU method puts the whole sweep in bf16


def test_deepspeed_trains_fp32_weights_under_autocast_in_the_bf16_regime(tiny_world):
    """Full FT's module keeps fp32 weights (the probes see what SMF's and LoRA's see), and its
    forward runs in bf16 under autocast."""
    from smf_sweep.methods import METHODS as REG
    from smf_sweep.methods import SetupContext
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.train_loop import TrainConfig

    model = load_model(tiny_world / "model", dtype="float32", device="cpu")
    tok = load_tokenizer(tiny_world / "model")
    cfg = TrainConfig(lr=1e-3, micro_batch_size=2, effective_batch=2, precision="bf16")
    setup = REG["full"].setup(model, REG["full"].Config(), SetupContext(tok, cfg, 3, torch.device("cpu")))
    assert {p.dtype for p in setup.export().parameters()} == {torch.float32}
    assert setup.model.torch_autocast_enabled() and setup.model.torch_autocast_dtype() == torch.bfloat16


def test_deepspeed_reduces_full_fts_gradients_in_fp32_as_plain_autocast(tiny_world):
    """Under DeepSpeed's `torch_autocast`, ZeRO reduces the gradient of every parameter it tags
    (by default each nn.Linear's) in bf16. Plain autocast — SMF's and LoRA's loop, HF Trainer's
    bf16=True — leaves gradients in fp32. With no module tagged, one micro-batch's ZeRO-2 gradient
    equals plain autocast's bit for bit (tagged, they differed by up to 1.8e-3 on the world's model)."""
    from smf_sweep.methods import METHODS as REG
    from smf_sweep.methods import SetupContext
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.train_loop import TrainConfig

    tok = load_tokenizer(tiny_world / "model")
    cfg = TrainConfig(lr=1e-3, micro_batch_size=2, effective_batch=2, precision="bf16")
    model = load_model(tiny_world / "model", dtype="float32", device="cpu")
    engine = REG["full"].setup(model, REG["full"].Config(), SetupContext(tok, cfg, 3, torch.device("cpu"))).model
    assert not any(hasattr(p, "comm_dtype") for p in engine.module.parameters())
    assert set(engine.optimizer.ipg_buckets) == {torch.float32}
    from smf_sweep.methods.full import grad_reduce_dtypes

    assert grad_reduce_dtypes(engine) == "float32"                # the GPU rehearsal's `full` check reads it
    ids = torch.tensor([tok("Question: what is the capital? Answer: the sea")["input_ids"]] * 2)   # (2, T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)                                        # one micro-batch: a boundary, reduced
    ours = torch.cat([g.flatten() for grads in engine.optimizer.averaged_gradients.values() for g in grads])
    ref = load_model(tiny_world / "model", dtype="float32", device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss = ref(input_ids=ids, labels=ids).loss
    ref_loss.backward()
    plain = torch.cat([p.grad.flatten() for p in ref.parameters() if p.grad is not None])
    assert ref_loss.item() == loss.item() and torch.equal(ours, plain)
