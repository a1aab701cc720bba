"""THE training loop and the three methods, in-process (no Ray) on the tiny world: each method
trains and its loss falls, each moves only what it should, a NaN stops the trial with a reason,
and no second training loop exists anywhere in the package."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from smf_sweep.worker import train_worker

PKG = Path(__file__).resolve().parents[1] / "smf_sweep"
SMF_TINY = {"layers": [1], "n_keys": 8, "heads": 2, "k": 4, "d_k": 16, "top_t": 6, "background_batches": 8,
            "retrofit": {"max_steps": 3, "max_len": 64, "warmup_steps": 1}}


def _config(world, method, method_cfg=None, **train):
    return {"model": str(world / "model"), "method": method, "method_cfg": method_cfg or {}, "seed": 0,
            "train": {"lr": 3e-3, "epochs": 10, "max_steps": 8, "micro_batch_size": 4, "effective_batch": 8, "max_len": 96,
                      "warmup_steps": 1, "log_every": 1, "train_limit": 64, **train},
            "data": {"task": f"world:{world}", "retrofit": f"world:{world}"}, "probes": [], "cache_dir": None}


def _run(world, tmp_path, method, method_cfg=None, **train):
    cfg = _config(world, method, method_cfg, **train)
    cfg["cache_dir"] = str(tmp_path / "cache")
    log = []
    final = train_worker(cfg, reporter=lambda m, c: log.append(m))
    return final, [m["train/loss"] for m in log if "train/loss" in m and "final" not in m]


@pytest.mark.parametrize("method, mcfg, lr", [("lora", {}, 3e-3), ("full", {}, 1e-3),
                                              ("smf", dict(SMF_TINY, mode="zero_values", selector="tf"), 3e-2)])
def test_each_method_trains_and_loss_falls(tiny_world, tmp_path, method, mcfg, lr):
    final, losses = _run(tiny_world, tmp_path, method, mcfg, lr=lr, max_steps=12)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.01, losses
    assert final["train/step"] == 12 and final["trainable_params"] > 0


def test_lora_changes_only_adapter_weights(tiny_world):
    import peft
    from smf_sweep.methods import METHODS, SetupContext
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.train_loop import TrainConfig

    model = load_model(tiny_world / "model", dtype="float32", device="cpu")
    tok = load_tokenizer(tiny_world / "model")
    cfg = TrainConfig(lr=1e-2, max_steps=3, warmup_steps=1, micro_batch_size=2, effective_batch=2)
    setup = METHODS["lora"].setup(model, METHODS["lora"].Config(rank=4, alpha=8), SetupContext(tok, cfg, 3, torch.device("cpu")))
    before = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    batch = tok(["Question: a?\nAnswer: b", "Question: c?\nAnswer: d"], return_tensors="pt", padding=True)
    for _ in range(3):
        loss = setup.model(**batch, labels=batch["input_ids"]).loss
        setup.stepper.backward(loss, 1)
        setup.stepper.step()
    changed = {n for n, p in setup.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed), changed
    assert isinstance(setup.model, peft.PeftModel)
    merged = setup.export()
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_smf_moves_only_selected_rows_each_step(tiny_world, tmp_path):
    """Through the real loop: after every step, value rows outside that step's selection are
    bit-identical, and at most top_t rows per micro-batch selection moved."""
    from smf_sweep.batching import Batcher, medmcqa_examples
    from smf_sweep.data import load_medmcqa
    from smf_sweep.memory import value_params
    from smf_sweep.methods import METHODS, SetupContext
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.train_loop import TrainConfig, run_stage

    model = load_model(tiny_world / "model", dtype="float32", device="cpu")
    tok = load_tokenizer(tiny_world / "model")
    cfg = TrainConfig(lr=1e-2, max_steps=6, warmup_steps=1, micro_batch_size=4, effective_batch=8, max_len=96, log_every=1)
    mcfg = METHODS["smf"].Config(**dict(SMF_TINY, mode="zero_values", selector="tfidf", optimizer="adamw"))
    ctx = SetupContext(tok, cfg, 6, torch.device("cpu"), cache_dir=tmp_path, data={"retrofit": f"world:{tiny_world}"})
    setup = METHODS["smf"].setup(model, mcfg, ctx)
    batcher = Batcher(medmcqa_examples(load_medmcqa(f"world:{tiny_world}", "train")), tok, micro_batch_size=4, max_len=96)
    updater = setup.hooks.updater
    values = value_params(model)
    snapshots = []

    def report(metrics, ckpt):
        snapshots.append(({i: v.detach().clone() for i, v in values.items()},
                          {i: m.clone() for i, m in updater.last_rows.items()}))

    before = {i: v.detach().clone() for i, v in values.items()}
    run_stage(setup, batcher, cfg, report)
    assert len(snapshots) == 6
    prev = before
    for step, (vals, rows) in enumerate(snapshots):
        for i, v in vals.items():
            moved = (v != prev[i]).any(dim=1)                       # (N,) rows that changed this step
            assert not (moved & ~rows[i]).any(), "a row outside the selection moved"
            assert int(rows[i].sum()) <= cfg.accumulation() * mcfg.top_t
            assert moved.any() or step == 0     # the study's schedule: lr = step/warmup = 0 at the first step
        prev = vals


def test_peak_memory_is_the_stages_training_without_its_evaluations(tiny_world):
    """On CUDA the loop reports `<stage>/peak_memory_bytes`: the peak counter is read before each
    curve point and reset after it, so an evaluation's spike (a 64-row probe batch's logits) is not
    the method's training cost. Here a scripted counter stands in for torch.cuda's: training peaks at
    10 units, each evaluation at 100. On a CPU there is no figure."""
    from smf_sweep.batching import Batcher, medmcqa_examples
    from smf_sweep.data import load_medmcqa
    from smf_sweep.methods import METHODS, SetupContext
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.train_loop import PeakMemory, TrainConfig, run_stage

    tok = load_tokenizer(tiny_world / "model")
    cfg = TrainConfig(lr=1e-3, max_steps=3, warmup_steps=1, micro_batch_size=4, effective_batch=4, max_len=96)
    batcher = Batcher(medmcqa_examples(load_medmcqa(f"world:{tiny_world}", "train")), tok, micro_batch_size=4,
                      max_len=96)
    counter = {"now": 0, "peak": 0}

    def alloc(n):                                   # what the device holds now, and its peak since a reset
        counter["now"] = n
        counter["peak"] = max(counter["peak"], n)

    def reset():
        counter["peak"] = counter["now"]

    def evaluate(step, total):
        alloc(100)                                  # the curve point's probe batch
        alloc(10 if step else 5)                    # freed; training state from step 1 on
        return {"curve/step": step}

    def setup():
        model = load_model(tiny_world / "model", dtype="float32", device="cpu")
        return METHODS["lora"].setup(model, METHODS["lora"].Config(), SetupContext(tok, cfg, 3, torch.device("cpu")))

    alloc(5)
    memory = PeakMemory(torch.device("cpu"), read=lambda: counter["peak"], reset=reset)
    last = run_stage(setup(), batcher, cfg, lambda m, c: None, evaluate=evaluate, memory=memory)
    assert last["train/peak_memory_bytes"] == 10
    counter.update(now=5, peak=5)
    unmeasured = run_stage(setup(), batcher, cfg, lambda m, c: None, evaluate=evaluate,
                           memory=PeakMemory(torch.device("cpu"), read=lambda: counter["peak"], reset=lambda: None))
    assert unmeasured["train/peak_memory_bytes"] == 100      # what reading once at the end counted
    assert "train/peak_memory_bytes" not in run_stage(setup(), batcher, cfg, lambda m, c: None)   # CPU: none


def test_nan_loss_fails_the_trial_with_a_reason(tiny_world, tmp_path):
    # LoRA at lr 1e30: adapters overflow fp32 within two steps. (SMF's values can blow up without
    # a NaN: the RMSNorm after the residual absorbs them and the loss just goes to ln|V|.)
    final, _ = _run(tiny_world, tmp_path, "lora", {}, lr=1e30, max_steps=30, grad_clip=0.0)
    assert final.get("diverged") == 1
    assert re.search(r"loss is (nan|inf) at step \d+/30", final["failure_reason"]), final["failure_reason"]
    assert not any(k.startswith("after/") for k in final)


def test_there_is_one_training_loop():
    """backward() and optimizer steps happen only in the loop and its steppers (the optimizers
    define step()); the world's pretraining runs through the same loop. A second loop fails this."""
    import ast

    allowed = {"train_loop.py", "stage.py", "methods/full.py", "memory/optim.py"}
    offenders = []
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG).as_posix()
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("backward", "step") and rel not in allowed):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"training steps outside the one loop: {offenders}"
    loop = (PKG / "train_loop.py").read_text()
    assert loop.count("def run_stage(") == 1 and loop.count("def run_stages(") == 1
    assert "run_stage" in (PKG / "world" / "pretrain.py").read_text()
    for method in ("smf.py", "lora.py", "full.py"):      # methods declare stages; the worker runs them
        assert "run_stage" not in (PKG / "methods" / method).read_text()
    assert "run_stages(method.stages(" in (PKG / "worker.py").read_text()


def test_run_stages_runs_passes_trains_and_caches_in_order(tmp_path):
    """A pass runs, an uncached stage trains, a cached stage trains only on a miss (then write, load),
    and the last stage is returned untrained, for the caller's task data."""
    from smf_sweep.stage import Setup, Stage, StageCache, TrainConfig, Training
    from smf_sweep.train_loop import run_stages

    events = []
    cfg = TrainConfig(max_steps=2)

    def training(name):
        return lambda: events.append(f"build {name}") or Training(Setup(model=None, stepper=None, export=None),
                                                                   batcher=name, cfg=cfg)

    def write(tmp):
        events.append("write")
        (tmp / "x").write_text("1")

    def stages():
        return [Stage("warm", train=training("warm")), Stage("pass", run=lambda: events.append("pass")),
                Stage("cached", train=training("cached"),
                      cache=StageCache(tmp_path, "k", write, lambda p: events.append(f"load {p.name}"))),
                Stage("train", train=training("task"))]

    def run(setup, batcher, cfg, *, stage, total_steps):
        events.append(f"train {stage} on {batcher}")

    last = run_stages(stages(), run=run)
    assert last.batcher == "task"
    assert events == ["build warm", "train warm on warm", "pass", "build cached", "train cached on cached",
                      "write", "load k", "build task"]
    events.clear()
    run_stages(stages(), run=run)                    # the entry exists: load, no training
    assert events == ["build warm", "train warm on warm", "pass", "load k", "build task"]
    with pytest.raises(ValueError, match="last stage"):
        run_stages(stages()[:-1], run=run)
    with pytest.raises(ValueError, match="only the trial's stage checkpoints"):
        run_stages([Stage("r", train=lambda: Training(Setup(None, None, None), "b", TrainConfig(checkpoint_every=5))),
                    Stage("train", train=training("task"))], run=run)


@pytest.mark.parametrize("mode, selector, names", [("additive", "kl", ["retrofit", "background", "train"]),
                                                   ("replace", "random", ["retrofit", "train"]),
                                                   ("zero_values", "tfidf", ["background", "train"]),
                                                   ("zero_values", "tf", ["train"])])
def test_smf_declares_its_stages(tiny_world, tmp_path, mode, selector, names):
    from smf_sweep.methods import METHODS, SetupContext
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.train_loop import TrainConfig

    model = load_model(tiny_world / "model", dtype="float32", device="cpu")
    ctx = SetupContext(load_tokenizer(tiny_world / "model"), TrainConfig(max_steps=2), 2, torch.device("cpu"),
                       cache_dir=tmp_path, data={"retrofit": f"world:{tiny_world}"})
    stages = METHODS["smf"].stages(model, METHODS["smf"].Config(**dict(SMF_TINY, mode=mode, selector=selector)), ctx)
    assert [s.name for s in stages] == names
    assert [s.cache is not None for s in stages] == [n == "retrofit" for n in names]
    assert not any((tmp_path / d).exists() for d in ("retrofits", "background")), "stages() ran a stage"


def test_retrofit_trains_memory_only_and_is_cached(tiny_world, tmp_path):
    """The dense retrofit runs through the same loop, leaves every base weight bit-identical, is
    cached by content, and a second trial with the same base/memory/data reuses it."""
    from smf_sweep.memory import memory_layers
    from smf_sweep.methods import METHODS, SetupContext
    from smf_sweep.models import load_model, load_tokenizer
    from smf_sweep.train_loop import TrainConfig, run_stage, run_stages

    tok = load_tokenizer(tiny_world / "model")
    mcfg = METHODS["smf"].Config(**dict(SMF_TINY, mode="additive", selector="tfidf"))
    stages = []

    def runner(setup, batcher, cfg, **kw):
        stages.append(kw.get("stage"))
        return run_stage(setup, batcher, cfg, lambda m, c: None, **kw)

    def setup_once():
        model = load_model(tiny_world / "model", dtype="float32", device="cpu")
        base = {n: p.detach().clone() for n, p in model.named_parameters()}
        ctx = SetupContext(tok, TrainConfig(lr=1e-2, max_steps=2), 2, torch.device("cpu"), cache_dir=tmp_path,
                           data={"retrofit": f"world:{tiny_world}"})
        setup = run_stages(METHODS["smf"].stages(model, mcfg, ctx), run=runner).setup
        return model, base, setup

    model, base, setup = setup_once()
    assert stages == ["retrofit"]
    for n, p in model.named_parameters():         # wrapped FFNs are renamed under .ffn
        key = n.replace(".mlp.ffn.", ".mlp.")
        if key in base:
            assert torch.equal(p, base[key]), f"retrofit moved base weight {n}"
    mem = {n: p.detach().clone() for w in memory_layers(model) for n, p in w.memory.named_parameters()}
    assert (tmp_path / "retrofits" / setup.info["retrofit_key"] / "memory.pt").exists()
    from smf_sweep.memory import insert_memory
    fresh = load_model(tiny_world / "model", dtype="float32", device="cpu")
    insert_memory(fresh, mcfg.memory(), generator=torch.Generator().manual_seed(0))
    init = {n: p for w in memory_layers(fresh) for n, p in w.memory.named_parameters()}
    assert any(not torch.equal(mem[n], init[n]) for n in mem), "the retrofit did not train the memory"
    model2, _, setup2 = setup_once()               # cache hit: no second retrofit stage
    assert stages == ["retrofit"] and setup2.info["retrofit_key"] == setup.info["retrofit_key"]
    mem2 = {n: p for w in memory_layers(model2) for n, p in w.memory.named_parameters()}
    assert all(torch.equal(mem[n], mem2[n]) for n in mem)


def test_choices_are_literals_beside_their_fields_and_agree_with_their_users():
    """String choices are Literal[...] on the field; __post_init__ names the field and the values."""
    import typing

    from smf_sweep.memory import GRANULARITIES, MODES
    from smf_sweep.methods import METHODS
    from smf_sweep.precision import PRECISIONS
    from smf_sweep.stage import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    assert typing.get_args(hints["precision"]) == PRECISIONS and typing.get_args(hints["loss_on"]) == ("all", "answer")
    smf = typing.get_type_hints(METHODS["smf"].Config)
    assert typing.get_args(smf["mode"]) == MODES and typing.get_args(smf["granularity"]) == GRANULARITIES
    with pytest.raises(ValueError, match=r"^train: loss_on must be all or answer, got 'prompt'$"):
        TrainConfig(loss_on="prompt")
    with pytest.raises(ValueError, match=r"^smf\.mode must be replace, additive or zero_values, got 'sum'$"):
        METHODS["smf"].Config(mode="sum")
    with pytest.raises(ValueError, match=r"^smf\.granularity must be micro or step"):
        METHODS["smf"].Config(granularity="batch")
    with pytest.raises(ValueError, match=r"smf\.selector: unknown 'bm25'; allowed: .*kl.*tfidf"):   # a registry
        METHODS["smf"].Config(selector="bm25")


def test_smf_retrofit_is_a_train_config_over_the_study_recipe():
    from dataclasses import asdict

    from smf_sweep.methods import METHODS
    from smf_sweep.stage import TrainConfig

    Config = METHODS["smf"].Config
    rt = Config().retrofit
    assert isinstance(rt, TrainConfig)
    assert (rt.epochs, rt.lr, rt.effective_batch, rt.micro_batch_size, rt.warmup_steps, rt.max_len, rt.weight_decay) \
        == (2.0, 5e-4, 16, 4, 100, 1024, 0.0)                 # QWEN's retrofit
    c = Config(retrofit={"max_steps": 6, "lr": 1e-3})          # a spec's mapping: over the recipe, not TrainConfig's
    assert (c.retrofit.max_steps, c.retrofit.lr, c.retrofit.epochs) == (6, 1e-3, 2.0)
    assert Config(**asdict(c)) == c                            # the worker rebuilds it from plain data
    for bad, words in [({"lrr": 1}, "smf.retrofit: unknown key(s) ['lrr']"), ({"lr": -1}, "smf.retrofit: lr must be > 0"),
                       ({"precision": "bf16"}, "smf.retrofit.precision: not settable (the precision regime is the sweep's"),
                       ({"checkpoint_every": 5}, "smf.retrofit.checkpoint_every: not settable"),
                       ({"loss_on": "answer"}, "smf.retrofit.loss_on: not settable")]:
        with pytest.raises(ValueError) as e:
            Config(retrofit=bad)
        assert words in str(e.value), str(e.value)



def test_a_spec_sets_the_retrofit_as_a_mapping_and_literal_choices_fail_by_name():
    from smf_sweep.spec import SpecError, build_configs, load_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "search_spaces" / "pareto.yaml", ["methods.smf_study.fixed.retrofit.max_steps=6"])
    study, _ = build_configs(spec, "smf_study", {})
    ours, _ = build_configs(spec, "smf", {})
    assert (study.retrofit.max_steps, study.retrofit.epochs, study.retrofit.lr) == (6, 2.0, 5e-4)
    assert ours.retrofit.max_steps is None and ours.retrofit.effective_batch == 16
    for override, words in [("methods.smf.fixed.retrofit.lrr=1", ["methods.smf.fixed", "smf.retrofit: unknown key(s) ['lrr']"]),
                            ("methods.smf.fixed.retrofit_epochs=2", ["methods.smf.fixed.retrofit_epochs", "retrofit"]),
                            ("search.sampler=grid", ["search.sampler: must be tpe, random or nsga2, got 'grid'"]),
                            ("train.precision=fp16", ["train", "precision must be auto, fp32 or bf16"])]:
        with pytest.raises(SpecError) as e:
            load_spec(root / "search_spaces" / "pareto.yaml", [override])
        assert all(w in str(e.value) for w in words), str(e.value)
