"""The study's path, item by item (issue 12), each on a CPU: local checkpoint copies are deleted
once reported, no EOS is appended unless asked, the schedule is transformers' (lr 0 at the first
step), and a checkpoint from shared storage is loaded as tensors only."""
from __future__ import annotations

import pickle

import pytest
import torch

from smf_sweep.batching import Batcher, Example
from smf_sweep.stage import TorchStepper, cosine_schedule
from smf_sweep.worker import train_worker


def test_checkpoint_copies_are_deleted_once_reported(tiny_world, tmp_path):
    """A trial writes a checkpoint every 2 steps and a final one: the reporter sees each directory
    with its files, and none is left on the node's disk afterwards."""
    seen = []

    def reporter(metrics, ckpt):
        if ckpt is not None:
            assert any(ckpt.iterdir()), "handed an empty checkpoint"
            seen.append(ckpt)

    cfg = {"model": str(tiny_world / "model"), "method": "lora", "method_cfg": {}, "seed": 0,
           "train": {"lr": 1e-3, "max_steps": 6, "micro_batch_size": 4, "effective_batch": 8, "max_len": 64,
                     "warmup_steps": 1, "log_every": 2, "checkpoint_every": 2, "train_limit": 32},
           "data": {"task": f"world:{tiny_world}", "retrofit": f"world:{tiny_world}"}, "probes": [],
           "cache_dir": str(tmp_path / "cache")}
    train_worker(cfg, reporter=reporter)
    assert len(seen) == 3                                  # steps 2 and 4, and the final metrics
    assert not any(p.exists() for p in seen), [p for p in seen if p.exists()]


def test_no_eos_is_appended_unless_asked(tiny_world):
    from smf_sweep.models import load_tokenizer

    tok = load_tokenizer(tiny_world / "model")
    ex = [Example("Question: a?\nAnswer:", " B. yes")] * 4
    plain = tok("Question: a?\nAnswer: B. yes", add_special_tokens=False)["input_ids"]
    study = Batcher(ex, tok, micro_batch_size=4, max_len=64)
    assert study.encoded[0][0] == plain                    # the study appends none (SMF_SPEC §6)
    eos = Batcher(ex, tok, micro_batch_size=4, max_len=64, append_eos=True)
    assert eos.encoded[0][0] == plain + [tok.eos_token_id]


def test_schedule_is_transformers_cosine_with_step_over_warmup():
    """HF Trainer's warmup is step/warmup: lr 0 at the first optimizer step (the old hand-written
    schedule had (step+1)/warmup)."""
    from transformers import get_cosine_schedule_with_warmup

    p = torch.nn.Parameter(torch.zeros(2))
    ours = cosine_schedule(torch.optim.SGD([p], lr=1.0), warmup=4, total=20)
    ref = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0), 4, 20)
    lrs, refs = [], []
    for _ in range(20):
        lrs.append(ours.get_last_lr()[0])
        refs.append(ref.get_last_lr()[0])
        ours.optimizer.step(), ours.step(), ref.optimizer.step(), ref.step()
    assert lrs == pytest.approx(refs) and lrs[0] == 0.0 and lrs[1] == 0.25 and lrs[4] == 1.0


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def test_checkpoint_loads_tensors_only(tmp_path):
    """A stepper checkpoint on world-writable shared storage cannot run code when loaded."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=1e-3)
    stepper = TorchStepper([p], opt, cosine_schedule(opt, 0, 10), grad_clip=None)
    stepper.save(tmp_path)
    stepper.load(tmp_path)                                 # a genuine checkpoint loads
    st = torch.load(tmp_path / "stepper.pt", weights_only=True)
    st["evil"] = _Payload()
    torch.save(st, tmp_path / "stepper.pt")
    with pytest.raises(pickle.UnpicklingError):
        stepper.load(tmp_path)


def test_wikitext_harness_defaults_to_the_document_level_dataset():
    """The spec's WikiText source (Salesforce/wikitext, line level) feeds the study variant; the
    harness variant scores documents from EleutherAI/wikitext_document_level."""
    from pathlib import Path

    from smf_sweep.spec import load_spec
    from smf_sweep.trial import probe_specs

    pareto = Path(__file__).resolve().parents[1] / "search_spaces" / "pareto.yaml"
    study = {p["task"]: p for p in probe_specs(load_spec(pareto))}
    assert study["wikitext"]["source"] == "Salesforce/wikitext"
    harness = {p["task"]: p for p in probe_specs(load_spec(pareto, ["probes.wikitext.variant=harness"]))}
    assert harness["wikitext"]["source"] == "EleutherAI/wikitext_document_level"
