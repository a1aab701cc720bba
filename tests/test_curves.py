"""Learning–forgetting curves (issue 15, item 2; smf_sweep/curves.py): evaluation points at the
steps asked for, that never change what trains, a KL drift that is the KL, and a spec section that
is checked and that leaves older sweeps' spec hash alone. The null trial's flat curve is in
test_invariants.py."""
from __future__ import annotations

import re

import pytest
import torch

from smf_sweep.curves import CurveConfig, kl_from, log_probs, subset, subset_data
from smf_sweep.objectives import Objectives
from smf_sweep.spec import SpecError, load_spec
from smf_sweep.worker import train_worker

TASKS = ("medmcqa", "triviaqa", "wikitext")
CURVES = {"every": 2, "limit": 8, "kl_texts": 2, "kl_len": 16}


def _config(world, tmp_path, curves: dict | None, **train):
    limits = {"medmcqa": 24, "triviaqa": 12, "wikitext": 8}
    probes = [{"task": t, "variant": "study", "source": f"world:{world}", "limit": limits[t], "options": {}} for t in TASKS]
    return {"model": str(world / "model"), "method": "lora", "method_cfg": {}, "seed": 0,
            "train": {"lr": 3e-3, "max_steps": 5, "micro_batch_size": 4, "effective_batch": 8, "max_len": 96,
                      "warmup_steps": 1, "log_every": 1, "train_limit": 64, "precision": "fp32", **train},
            "data": {"task": f"world:{world}", "retrofit": f"world:{world}"}, "probes": probes,
            "probe_batch_size": 8, "cache_dir": str(tmp_path / "cache"),
            **({"curves": curves, "objectives": Objectives().to_json()} if curves else {})}


def test_due_steps():
    c = CurveConfig(every=3)
    assert [s for s in range(0, 11) if c.due(s, 10)] == [0, 3, 6, 9, 10]
    assert not CurveConfig().on and not any(CurveConfig().due(s, 10) for s in range(11))


def test_curves_never_change_what_trains_and_drift_grows(tiny_world, tmp_path):
    """Same losses and after-probes with and without curves; points at 0, 2, 4 and the last step;
    the base model's point is flat; training moves KL above zero."""
    off = train_worker(_config(tiny_world, tmp_path / "off", None), reporter=lambda m, c: None)
    seen = []
    on = train_worker(_config(tiny_world, tmp_path / "on", CURVES), reporter=lambda m, c: seen.append(m))
    for k in ["train/loss", *(f"after/{t}" for t in TASKS)]:
        assert on[k] == off[k], (k, on[k], off[k])
    points = [m for m in seen if "curve/kl_general" in m]
    assert [m["curve/step"] for m in points] == [0, 2, 4, 5]
    assert points[0]["curve/kl_general"] == pytest.approx(0.0, abs=1e-7)     # LoRA starts as the base model
    assert points[-1]["curve/kl_general"] > 1e-4
    obj = Objectives()
    for m in points:
        assert set(obj.names) <= {k.removeprefix("curve/") for k in m}
        assert m["curve/medmcqa_gain_pp"] == m["curve/medmcqa/delta"]
        assert m["curve/seconds"] > 0
    assert not any(k.startswith("curve/") for k in on), "curve metrics stay out of the final record"


def test_kl_drift_is_the_kl(tiny_world):
    """kl_from against torch's own KL on the same windows: base ‖ a perturbed copy."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_world / "model")).eval()
    other = AutoModelForCausalLM.from_pretrained(str(tiny_world / "model")).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p, generator=None))
    ids = torch.randint(3, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    lp0 = log_probs(base, ids, "fp32")                                   # (2, 12, V)
    lp1 = log_probs(other, ids, "fp32")
    want = torch.nn.functional.kl_div(lp1, lp0, log_target=True, reduction="sum").item() / ids.numel()
    assert kl_from(lp0, other, ids, "fp32") == pytest.approx(want, rel=1e-5)
    assert kl_from(lp0, base, ids, "fp32") == pytest.approx(0.0, abs=1e-7)


def test_the_subset_is_a_fixed_sample_in_order_or_the_head():
    items = list(range(100))
    one = [[x] for x in items]                                                          # one item per unit
    drawn = subset(one, 10)
    assert drawn == subset(one, 10) == sorted(set(drawn)) and len(drawn) == 10        # the same every time, in order
    assert drawn != items[:10] and max(drawn) >= 50                                     # not the head
    assert subset(one, 10, "first") == items[:10]
    assert subset(one, 200) == subset(one, 200, "first") == items                      # fewer items than asked: all
    # units are drawn whole (WikiText's articles) until they hold k items; the head still cuts at k
    arts = [items[i:i + 3] for i in range(0, 99, 3)] + [[99]]
    got = subset(arts, 10)
    assert len(got) == 12 and all(got[i:i + 3] in arts for i in range(0, 12, 3)) and got == sorted(got)
    assert subset(arts, 10, "first") == items[:10]
    with pytest.raises(ValueError, match="curves.subset"):
        subset(one, 10, "last")


def test_a_sampled_curve_reads_every_kind_of_fact_the_head_reads_one(tiny_world):
    """The world lists TriviaQA's facts country by country, then cities, then people (render.py): the
    head of the probe is one kind of fact, the sample spans them, from the items the end point scores."""
    from smf_sweep.probes import ProbeSpec
    from smf_sweep.world.render import QUESTIONS

    kind = [(re.compile(re.escape(t).replace(re.escape("{e}"), ".+")), k) for (k, _), t in QUESTIONS.items()]

    def kinds(how):
        [(key, _, rows)] = subset_data([ProbeSpec("triviaqa", source=f"world:{tiny_world}", limit=0)], 8, how)
        assert key == "triviaqa" and len(rows) == 8
        return {next(k for pat, k in kind if pat.fullmatch(r["question"])) for r in rows}

    assert kinds("first") == {"country"}
    assert kinds("sample") == {"country", "city", "person"}


def test_wikitext_is_sampled_by_article_each_with_its_title(tiny_world):
    """The line-level WikiText probe scores its lines as one text: a line drawn out of its article
    loses its context (on the default world the base model's perplexity was 2.95 on 64 lines drawn one
    by one, 2.02 on 66 lines of whole articles, 2.11 on all 300), so the sample draws articles."""
    from smf_sweep.probes import ProbeSpec, make_probe, sample_units
    from smf_sweep.probes.wikitext import TOP_HEADING

    probe = make_probe("wikitext", "study")
    lines = probe.load(f"world:{tiny_world}", 0)
    arts = sample_units(probe, lines)
    assert sum(arts, []) == lines and all(TOP_HEADING.match(a[0]) for a in arts) and len(arts) > 3
    assert not TOP_HEADING.match("= = Career = =") and TOP_HEADING.match("= Robert Boulter =")
    [(_, _, got)] = subset_data([ProbeSpec("wikitext", source=f"world:{tiny_world}", limit=0)], 8, "sample")
    heads = [i for i, line in enumerate(got) if TOP_HEADING.match(line)]
    assert heads[0] == 0 and len(got) >= 8
    assert [got[a:b] for a, b in zip(heads, heads[1:] + [len(got)])] == [a for a in arts if a[0] in got]
    assert sample_units(make_probe("triviaqa", "study"), [1, 2]) == [[1], [2]]          # questions: one by one


def test_the_kl_batch_starts_at_sampled_articles_or_is_the_head(tiny_world):
    """The drift batch under `first` is the validation split's head, consecutive (in the world the first
    countries; on the hub one article); under `sample` each window starts at its own sampled article,
    fixed from trial to trial, and no two windows share an article."""
    from smf_sweep.curves import general_windows
    from smf_sweep.models import load_tokenizer
    from smf_sweep.probes import ProbeSpec, make_probe, sample_units
    from smf_sweep.probes.wikitext import TOP_HEADING

    tok = load_tokenizer(str(tiny_world / "model"))
    spec = ProbeSpec("wikitext", source=f"world:{tiny_world}", limit=0)
    head = general_windows(tok, spec, 3, 16, "first")
    probe = make_probe("wikitext", "study", split="validation")
    arts = sample_units(probe, probe.load(spec.source, 0))
    joined = tok("\n\n".join(sum(arts, [])), add_special_tokens=False)["input_ids"]
    assert head.shape == (3, 16) and head.flatten().tolist() == joined[:48]
    got = general_windows(tok, spec, 3, 16, "sample")
    assert got.shape == (3, 16) and torch.equal(got, general_windows(tok, spec, 3, 16, "sample"))
    starts = [next(i for i, a in enumerate(arts)
                   if tok("\n\n".join(a), add_special_tokens=False)["input_ids"][:8] == row[:8].tolist()) for row in got]
    assert starts == sorted(set(starts)) and starts != [0, 1, 2] and max(starts) > len(arts) // 2
    assert all(TOP_HEADING.match(arts[i][0]) for i in starts)
    with pytest.raises(ValueError, match="kl_texts = 999"):
        general_windows(tok, spec, 999, 16, "sample")


def test_the_kl_batch_reads_hub_wikitext_by_its_titles(tiny_world, tmp_path):
    """On the hub's line format (a leading space, " = Title = ", " = = Section = = ", empty lines), from
    a local directory of the same schema: each sampled window starts at an article's title, never at a
    section heading, and the head is the first article."""
    import json

    from smf_sweep.curves import general_windows
    from smf_sweep.models import load_tokenizer
    from smf_sweep.probes import ProbeSpec

    rows = []
    for a in range(12):
        rows += [{"text": ""}, {"text": f" = Article {a} = \n"}, {"text": ""},
                 {"text": f" Article {a} is about the river number {a} and the towns on it . \n"},
                 {"text": ""}, {"text": " = = History = = \n"}, {"text": ""},
                 {"text": f" The towns on river {a} were founded in {1700 + a} , after long talks . \n"}]
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_tokenizer(str(tiny_world / "model"))
    spec = ProbeSpec("wikitext", source=str(tmp_path), limit=0)
    def start(row) -> int | None:                               # the article a window opens with its title
        m = re.match(r"= Article (\d+) =\n", tok.decode(row.tolist()))
        return int(m.group(1)) if m else None

    got = general_windows(tok, spec, 4, 24, "sample")            # (4, 24)
    starts = [start(row) for row in got]
    assert None not in starts and starts == sorted(set(starts)) and starts != [0, 1, 2, 3], starts
    assert start(general_windows(tok, spec, 2, 24, "first")[0]) == 0


SMOKE = "search_spaces/smoke.yaml"


def test_spec_curves_section_is_checked_and_default_keeps_the_hash():
    assert load_spec(SMOKE, ["curves.every=0"]).curves.every == 0
    on = load_spec(SMOKE, ["curves.every=7", "curves.limit=32"])
    assert on.curves.every == 7 and on.curves.limit == 32
    default = load_spec(SMOKE, ["curves={}"])
    assert "curves" not in default.to_dict()
    with pytest.raises(SpecError, match="curves.every"):
        load_spec(SMOKE, ["curves.every=-1"])
    with pytest.raises(SpecError, match="unknown key"):
        load_spec(SMOKE, ["curves.evry=5"])
    with pytest.raises(SpecError, match="curves.subset"):
        load_spec(SMOKE, ["curves.every=7", "curves.subset=last"])
    # `first` was every curve's subset before `subset` existed: those sweeps keep their hash; the sample
    # reads other items, so it is another spec
    first = load_spec(SMOKE, ["curves.every=7", "curves.subset=first"])
    assert "subset" not in first.to_dict()["curves"] and on.curves.subset == "sample"
    assert on.spec_hash() != first.spec_hash()
    assert "curves" not in load_spec(SMOKE, ["curves={every: 0, subset: first}"]).to_dict()   # off: no sample


def test_worker_config_carries_curves_and_objectives():
    from smf_sweep.trial import worker_config

    spec = load_spec(SMOKE, ["curves.every=5"])
    cfg = worker_config(spec, "lora", {"rank": 4, "alpha": 8, "lr": 1e-3}, seed=0)
    assert cfg.curves.every == 5
    assert Objectives.from_json(cfg.objectives).names == Objectives.from_spec(spec).names
