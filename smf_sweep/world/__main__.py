"""Build the embedded world (deterministic, cached by content; progress bar; prints its directory last).

    python -m smf_sweep.world build [--out DIR] [--seed N] [--set FIELD=VALUE ...] [--force]
    python -m smf_sweep.world path  [--seed N] [--set FIELD=VALUE ...]   # where that world is (built or not)
    python -m smf_sweep.world build --set fresh_articles=true            # a WorldConfig field, as a spec's `world:`
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import yaml

from ..yamlio import load_yaml
from .build import build_world, default_world_dir
from .config import WorldConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smf_sweep.world", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) the world; prints its directory last")
    b.add_argument("--out", help="the world's directory (default: the cache, keyed by content)")
    b.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    b.add_argument("--force", action="store_true", help="rebuild even if --out holds a world")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("path", help="print the default world's directory")
    p.add_argument("--seed", type=int, default=0)
    for a in (b, p):
        a.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="a WorldConfig field (smf_sweep/world/config.py), e.g. fresh_articles=true, steps=1400")
    args = ap.parse_args(argv)
    try:
        cfg = WorldConfig(seed=args.seed, **_fields(args.set))
    except ValueError as e:
        print(f"error: --set: {e}", file=sys.stderr)
        return 2
    if args.cmd == "path":
        print(default_world_dir(cfg))
        return 0
    try:
        out = build_world(cfg, args.out, progress=not args.quiet, force=args.force)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = json.loads((out / "world.json").read_text())
    print(f"world {info['key']}: {info['parameters']:,} parameters, built in {info['build_seconds']:.0f} s, "
          f"{info['sizes']['general_facts']} general facts, {info['sizes']['medical_facts']} medical facts",
          file=sys.stderr)
    if info.get("base_probes"):
        print("base model: " + ", ".join(f"{k} {v:.4g}" for k, v in info["base_probes"].items()), file=sys.stderr)
    print(out)
    return 0


def _fields(sets: list[str]) -> dict:
    """{field: value} of `FIELD=VALUE` items (values read as the specs read YAML: yamlio.load_yaml), checked against
    WorldConfig's fields and their types."""
    names = {f.name: f for f in dataclasses.fields(WorldConfig)}
    out = {}
    for item in sets:
        k, eq, v = item.partition("=")
        if not eq or k not in names or k == "seed":
            raise ValueError(f"{item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(n for n in names if n != 'seed')} (the seed is --seed)")
        default = names[k].default
        try:
            value = load_yaml(v)                  # the specs' reader: 1e-3 is a float, true a bool
        except yaml.YAMLError:
            value = None
        if type(default) is float and type(value) is int:
            value = float(value)
        if type(value) is not type(default):
            raise ValueError(f"{item!r}: {k} is a {type(default).__name__} (default {default!r})")
        out[k] = value
    return out


if __name__ == "__main__":
    sys.exit(main())
