"""Compare the `harness` probe variants with lm-evaluation-harness itself, on the same model and data.

    python -m smf_sweep.parity [--world DIR] [--tasks ...] [--limit N] [--generation-config JSON] [--json]

Runs lm_eval's own `medmcqa`, `triviaqa` and `wikitext` tasks (their YAMLs, utils and HFLM, only the
dataset path pointed at local files in the real schemas) and this package's `*:harness` probes on
the same model, then compares them per item: MedMCQA per-choice log-likelihoods and acc/acc_norm,
TriviaQA filtered outputs and exact_match, WikiText per-document log-likelihoods and word/byte
perplexity. Needs the `harness` extra (`pip install -e .[harness]`, lm_eval 0.4.13). Exit status 1
when anything differs beyond the tolerance (default 1e-4, relative for the log-likelihoods).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

# lm_eval task -> (its YAML inside lm_eval/tasks, the world's data file, that file's split, overrides:
# no hub config name, and no splits the world does not ship; the evaluated split stays the task's own)
TASKS = {
    "medmcqa": ("medmcqa/medmcqa.yaml", "medmcqa/validation.jsonl", "validation", {"training_split": None}),
    "triviaqa": ("triviaqa/default.yaml", "trivia_qa/validation.jsonl", "validation",
                 {"dataset_name": None, "training_split": None}),
    "wikitext": ("wikitext/wikitext.yaml", "wikitext_document_level/test.jsonl", "test",
                 {"dataset_name": None, "training_split": None, "validation_split": None}),
}


@dataclass
class Check:
    task: str
    what: str
    ours: float
    harness: float
    worst: float = 0.0             # worst per-item difference behind this figure
    ok: bool = True
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        flag = "ok" if self.ok else "DIFFERS"
        return (f"{self.task:9s} {self.what:22s} ours {self.ours:12.6f}  harness {self.harness:12.6f}  "
                f"worst item diff {self.worst:.2e}  {flag}")


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise SystemExit("parity: lm_eval is not installed; `pip install -e .[harness]` "
                         f"(lm_eval==0.4.13) first ({e})") from e
    return lm_eval, TaskManager


def write_task_yamls(data_dir: Path, out: Path, tasks: Sequence[str]) -> dict[str, str]:
    """One YAML per task that includes lm_eval's own and points its dataset at `data_dir`'s jsonl."""
    import lm_eval.tasks

    import yaml

    root = Path(lm_eval.tasks.__file__).parent
    names = {}
    for t in tasks:
        src, rel, split, extra = TASKS[t]
        data_file = data_dir / rel
        if not data_file.is_file():
            raise SystemExit(f"parity: {t}: no data file {data_file}")
        name = f"{t}_parity"
        cfg = {"include": str(root / src), "task": name, "dataset_path": "json",
               "dataset_kwargs": {"data_files": {split: str(data_file)}}, **extra}
        (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        names[t] = name
    return names


def run_harness(model_dir: Path, data_dir: Path, tasks: Sequence[str], limit: int | None,
                batch_size: int) -> dict[str, dict[str, Any]]:
    """lm_eval.simple_evaluate with HFLM on CPU, fp32; per task: metrics and samples (doc order)."""
    lm_eval, TaskManager = _lm_eval()
    with tempfile.TemporaryDirectory() as tmp:
        names = write_task_yamls(data_dir, Path(tmp), tasks)
        res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32",
                                      tasks=list(names.values()), task_manager=TaskManager(include_path=tmp),
                                      batch_size=batch_size, device="cpu", limit=limit, log_samples=True,
                                      bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                                      torch_random_seed=0, fewshot_random_seed=0)
    out = {}
    for t, name in names.items():
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        metrics = {k.split(",")[0]: v for k, v in res["results"][name].items() if "," in k}
        out[t] = {"metrics": metrics, "samples": samples}
    return out


def run_ours(model_dir: Path, data_dir: Path, tasks: Sequence[str], limit: int | None,
             batch_size: int) -> dict[str, Any]:
    from .models import load_model, load_tokenizer
    from .probes import make_probe

    model = load_model(model_dir, dtype="float32", device="cpu")
    tok = load_tokenizer(model_dir)
    out = {}
    for t in tasks:
        probe = make_probe(t, "harness")
        out[t] = probe.run(model, tok, probe.load(f"world:{data_dir.parent}", limit or 0), batch_size=batch_size)
    return out


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(1.0, abs(b))


def compare(ours: dict[str, Any], theirs: dict[str, dict[str, Any]], tol: float) -> list[Check]:
    checks = []
    for t, h in theirs.items():
        r, s, m = ours[t], h["samples"], h["metrics"]
        if len(r.items or []) != len(s):
            raise SystemExit(f"parity: {t}: ours scored {len(r.items or [])} items, the harness {len(s)}")
        if t == "medmcqa":
            worst = max((_rel(float(x), float(resp[0][0])) for it, smp in zip(r.items, s)
                         for x, resp in zip(it["scores"], smp["resps"])), default=0.0)
            for what, ours_v in (("acc", r.value), ("acc_norm", r.extras["acc_norm"])):
                checks.append(Check(t, what, ours_v, m[what], worst, worst <= tol and ours_v == m[what]))
        elif t == "triviaqa":
            diff = [(it["output"], smp["filtered_resps"][0]) for it, smp in zip(r.items, s)
                    if it["output"] != smp["filtered_resps"][0]]
            c = Check(t, "exact_match", r.value, m["exact_match"], float(len(diff)),
                      not diff and r.value == m["exact_match"])
            c.notes = [f"ours {a!r} harness {b!r}" for a, b in diff[:5]]
            checks.append(c)
        else:
            lls = [float(smp["filtered_resps"][0]) for smp in s]     # one rolling log-likelihood per page
            worst = max((_rel(it["loglikelihood"], ll) for it, ll in zip(r.items, lls)), default=0.0)
            for what, ours_v in (("word_perplexity", r.value), ("byte_perplexity", r.extras["byte_perplexity"]),
                                 ("bits_per_byte", r.extras["bits_per_byte"])):
                checks.append(Check(t, what, ours_v, m[what], worst,
                                    worst <= tol and _rel(ours_v, m[what]) <= tol))
    return checks


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m smf_sweep.parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, help="an embedded world's directory (default: build or reuse the "
                   "default world)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--limit", type=int, default=None, help="first N items per task (default: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tol", type=float, default=1e-4, help="largest relative log-likelihood difference allowed")
    p.add_argument("--generation-config", type=json.loads, default=None, metavar="JSON",
                   help="entries to set in a copy of the model's generation_config.json before both run, e.g. "
                   "'{\"repetition_penalty\": 1.1, \"eos_token_id\": [0, 5]}' (Qwen2.5-Instruct ships a penalty "
                   "of 1.1 and two EOS ids; lm_eval's generate honours them). With a penalty, compare at "
                   "--batch-size 1: transformers' processor also penalises the pads of lm_eval's padded batches")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p.parse_args(argv)


def with_generation_config(model_dir: Path, entries: dict, out: Path) -> Path:
    """A copy of `model_dir` under `out` whose generation_config.json has `entries` set."""
    import shutil

    copy = out / "model"
    shutil.copytree(model_dir, copy)
    path = copy / "generation_config.json"
    gc = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**gc, **entries}, indent=1))
    return copy


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _lm_eval()                                        # fail before building anything
    if args.world is None:
        from .world.build import build_world
        args.world = build_world(progress=True)
    world = Path(args.world)
    model_dir, data_dir = world / "model", world / "data"
    with tempfile.TemporaryDirectory() as tmp:
        if args.generation_config:
            model_dir = with_generation_config(model_dir, args.generation_config, Path(tmp))
        theirs = run_harness(model_dir, data_dir, args.tasks, args.limit, args.batch_size)
        ours = run_ours(model_dir, data_dir, args.tasks, args.limit, args.batch_size)
    checks = compare(ours, theirs, args.tol)
    gen = f", generation_config {json.dumps(args.generation_config)}" if args.generation_config else ""
    print(f"lm-evaluation-harness parity on {world} (limit {args.limit or 'all'}, tol {args.tol:g}{gen})")
    for c in checks:
        print(c.row())
        for n in c.notes:
            print("    " + n)
    ok = all(c.ok for c in checks)
    print("parity: all equal" if ok else "parity: DIFFERENCES (see above)")
    if args.json:
        print(json.dumps({"world": str(world), "limit": args.limit, "ok": ok,
                          "checks": [{k: v for k, v in vars(c).items() if not (isinstance(v, float) and math.isnan(v))}
                                     for c in checks]}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
