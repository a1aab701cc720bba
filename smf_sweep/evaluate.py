"""Run the probes on one model and print a table (and, with --json, one JSON object as the last line).

    python -m smf_sweep.evaluate --data world:/tmp/world                       # model: /tmp/world/model
    python -m smf_sweep.evaluate --model Qwen/Qwen2.5-0.5B-Instruct --data hub --limit 100 --json
    python -m smf_sweep.evaluate --data hub --variant harness --probes wikitext
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

from .data.sources import WORLD_PREFIX
from .models import DEFAULT_MODEL, load_model, load_tokenizer
from .probes import TASKS, VARIANTS, ProbeResult, ProbeSpec, run_probes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m smf_sweep.evaluate", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Probes (variant study = the reproduced paper's protocol; harness = lm-evaluation-harness):\n"
               "  medmcqa   accuracy on MedMCQA validation (study: single-choice, first 1000)\n"
               "  wikitext  perplexity (study: wikitext-103 test, token ppl; harness: wikitext-2 documents, word ppl)\n"
               "  triviaqa  accuracy on TriviaQA rc.nocontext validation (study: first 1000, alias substring)\n"
               "Data: 'hub' reads openlifescienceai/medmcqa, Salesforce/wikitext (wikitext-103-v1),\n"
               "EleutherAI/wikitext_document_level, mandarjoshi/trivia_qa (rc.nocontext) through `datasets`;\n"
               "'world:DIR' reads DIR/data/<dataset>/<split>.jsonl (docs/contracts.md).")
    p.add_argument("--model", default=None,
                   help=f"hub id or save_pretrained directory (default: DIR/model with --data world:DIR, "
                        f"else {DEFAULT_MODEL})")
    p.add_argument("--data", required=True, metavar="world:DIR|hub",
                   help="where the probe data comes from: 'hub' (the real datasets) or 'world:DIR' (an embedded world)")
    p.add_argument("--probes", nargs="+", default=list(TASKS), choices=TASKS, metavar="TASK",
                   help=f"tasks to run, any of {' '.join(TASKS)} (default: all three)")
    p.add_argument("--variant", default="study", choices=VARIANTS, help="evaluation protocol (default: study)")
    p.add_argument("--limit", type=int, default=None,
                   help="examples per probe (MedMCQA/TriviaQA questions, WikiText lines or documents); "
                        "default: each protocol's own (study 1000, harness all); 0 = all")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on cuda, fp32 on cpu), float32, bfloat16, float16")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="also print all results as one JSON object, the last line")
    args = p.parse_args(argv)
    if args.data != "hub" and not args.data.startswith(WORLD_PREFIX):
        p.error(f"--data must be 'hub' or 'world:DIR', got {args.data!r}")
    if args.limit is not None and args.limit < 0:
        p.error("--limit must be >= 0")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.model is None:
        args.model = str(Path(args.data[len(WORLD_PREFIX):]) / "model") if args.data != "hub" else DEFAULT_MODEL
    return args


def format_table(results: dict[str, ProbeResult]) -> str:
    head = f"{'probe':<18} {'metric':<16} {'value':>12} {'n':>6}  {'version':<14} {'seconds':>8}  extras"
    lines = [head, "-" * len(head)]
    for r in results.values():
        extras = ", ".join(f"{k}={_fmt(v)}" for k, v in r.extras.items())
        lines.append(f"{r.name:<18} {r.metric:<16} {_fmt(r.value):>12} {r.n:>6}  {r.version:<14} "
                     f"{r.seconds:>8.1f}  {extras}")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) and abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    tokenizer = load_tokenizer(args.model)
    specs = [ProbeSpec(t, args.variant, source=args.data, limit=args.limit) for t in args.probes]
    results = run_probes(model, tokenizer, specs, batch_size=args.batch_size, progress=not args.no_progress)
    print(f"model {args.model}  data {args.data}  variant {args.variant}")
    print(format_table(results))
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "variant": args.variant, "limit": args.limit,
                          "probes": {k: r.to_dict() for k, r in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
