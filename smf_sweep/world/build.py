"""Build the embedded world: facts → datasets in the real schemas → tokenizer → pretrained model.

Deterministic for a given WorldConfig (seeded RNGs, fixed thread count); cached under a key that
hashes the config and this package's source, so a changed generator never reuses a stale world."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import torch

from . import render
from .config import WorldConfig
from .facts import make_worlds
from ..models import load_tokenizer
from .pretrain import build_model, pretrain, train_tokenizer

FORMAT_VERSION = 1   # bump when the directory layout changes


def cache_root() -> Path:
    """$SMF_SWEEP_CACHE, else ~/.cache/smf_sweep."""
    return Path(os.environ.get("SMF_SWEEP_CACHE", Path.home() / ".cache" / "smf_sweep")).expanduser().resolve()


def world_key(cfg: WorldConfig) -> str:
    """Hash of the config and of the generator's source code (every .py file of this package but its
    command line, __main__.py, which builds nothing)."""
    h = hashlib.sha256(json.dumps({"cfg": cfg.to_dict(), "format": FORMAT_VERSION}, sort_keys=True).encode())
    for f in sorted(p for p in Path(__file__).parent.glob("*.py") if p.name != "__main__.py"):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def default_world_dir(cfg: WorldConfig = WorldConfig()) -> Path:
    return cache_root() / "worlds" / f"world-{world_key(cfg)}"


def content_hash(world: Path) -> str:
    """sha256 over every file of the world except world.json (paths and bytes, sorted)."""
    h = hashlib.sha256()
    for f in sorted(p for p in world.rglob("*") if p.is_file() and p.name != "world.json"):
        h.update(str(f.relative_to(world)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def write_data(cfg: WorldConfig, data: Path) -> dict:
    """All datasets in their real schemas; returns the texts the tokenizer and pretraining need."""
    g, m = make_worlds(cfg)
    rng = random.Random(cfg.seed + 1)
    wiki = render.wikitext_splits(g, cfg.article_renders, rng)
    for split, lines in wiki.items():
        _write_jsonl(data / "wikitext" / f"{split}.jsonl", [{"text": ln + "\n"} for ln in lines])
    _write_jsonl(data / "wikitext_document_level" / "test.jsonl",
                 [{"page": doc} for doc in _documents(wiki["test"])])
    trivia = render.trivia_rows(g)
    _write_jsonl(data / "trivia_qa" / "validation.jsonl", trivia)
    oasst = render.oasst_rows(g, rng)
    trees = sorted({r["message_tree_id"] for r in oasst})
    val_trees = set(trees[:: 10])                                    # every 10th tree held out
    _write_jsonl(data / "oasst1" / "train.jsonl", [r for r in oasst if r["message_tree_id"] not in val_trees])
    _write_jsonl(data / "oasst1" / "validation.jsonl", [r for r in oasst if r["message_tree_id"] in val_trees])
    med = render.medmcqa_splits(m, cfg.train_variants, cfg.val_variants, rng)
    for split, rows in med.items():
        _write_jsonl(data / "medmcqa" / f"{split}.jsonl", rows)

    mcq = render.general_mcq_texts(g, cfg.general_mcq_variants, rng)
    medicine = render.general_medicine_texts(rng)
    train_articles = [] if cfg.fresh_articles else _documents(wiki["train"])     # else: fresh_texts, each epoch
    pretrain_docs = (train_articles + [render.trivia_text(r) for r in trivia] + mcq + medicine
                     + [r["text"] for r in oasst if r["role"] == "assistant" and r["message_tree_id"] not in val_trees])
    rng.shuffle(pretrain_docs)
    tokenizer_docs = list(pretrain_docs)          # fresh_general: the tokenizer still learns from these
    if cfg.fresh_general:                         # fresh_texts renders them anew every epoch
        generated = set(mcq + medicine + [r["text"] for r in oasst])
        pretrain_docs = [d for d in pretrain_docs if d not in generated]
    sizes = {"general_facts": len(render.general_facts(g)), "medical_facts": 4 * len(m.diseases),
             "wikitext": {k: len(v) for k, v in wiki.items()}, "trivia_qa": len(trivia), "oasst1": len(oasst),
             "medmcqa": {k: len(v) for k, v in med.items()}, "general_mcq": len(mcq),
             "pretrain_docs": len(pretrain_docs)}
    # The tokenizer learns from the pretraining text only: medical names then split into pieces the
    # model has seen, as a real tokenizer splits rare terms. (Trained on medical text too, whole drug
    # names became single tokens the model never saw in pretraining: untrained embeddings that even
    # copying cannot use, and the task became unlearnable.)
    copy_sample = render.copy_texts(random.Random(cfg.seed), cfg.copy_texts)
    return {"pretrain_docs": pretrain_docs, "tokenizer_texts": tokenizer_docs + copy_sample, "sizes": sizes}


def fresh_texts(cfg: WorldConfig, stream: int = 0):
    """The pretraining texts new in each epoch, `fresh(epoch) -> list[str]` (pretrain.PackedBatcher):
    `copy_texts` texts with new random names; with `fresh_articles`, `article_renders` new renders of
    every WikiText article (the same facts and templates in new combinations, as the test split's);
    with `fresh_general`, new general multiple-choice questions, general-medicine texts and OASST
    replies. `stream` 0 is the build's; the calibration continues the stream under other numbers."""
    g = make_worlds(cfg)[0] if cfg.fresh_articles or cfg.fresh_general else None
    s = cfg.seed + stream

    def fresh(epoch: int) -> list[str]:
        texts = render.copy_texts(random.Random(s * 7919 + epoch), cfg.copy_texts)
        if cfg.fresh_articles:
            texts += _documents(render.articles(g, cfg.article_renders, random.Random(s * 104729 + epoch + 1)))
        if cfg.fresh_general:
            r = random.Random(s * 15485863 + epoch + 1)
            texts += render.general_mcq_texts(g, cfg.general_mcq_variants, r) + render.general_medicine_texts(r)
            texts += [x["text"] for x in render.oasst_rows(g, r) if x["role"] == "assistant"]
        return texts
    return fresh


def _documents(lines: list[str]) -> list[str]:
    """WikiText lines → one string per article (a ' = Title = ' line starts each), its stripped
    lines joined by a blank line: the text exactly as the study's WikiText probe joins lines (and
    as the document-level pages read). Pretraining on "\n"-joined articles left every "\n\n" of
    the probe's text unseen (≈ 12 nats on one token in ten): any finetuning on text with line breaks
    then "improved" WikiText by 14 %, the spill-over the calibration control caught."""
    docs, cur = [], []
    for ln in lines:
        if ln.startswith(" = ") and cur:
            docs.append("\n\n".join(cur))
            cur = []
        if ln.strip():
            cur.append(ln.strip())
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def build_world(cfg: WorldConfig = WorldConfig(), out: Path | str | None = None, *, progress: bool = True,
                force: bool = False) -> Path:
    """Build (or reuse) the world; returns its directory."""
    key = world_key(cfg)
    out = Path(out).expanduser().resolve() if out else default_world_dir(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out.with_name(out.name + ".lock")):
        meta = out / "world.json"
        if meta.exists() and not force:
            have = json.loads(meta.read_text()).get("key")
            if have == key:
                return out
            raise FileExistsError(f"{out} holds another world (key {have}, wanted {key}); "
                                  "pass another --out, or --force to replace it")
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            texts = write_data(cfg, tmp / "data")
            train_tokenizer(texts["tokenizer_texts"], cfg, tmp / "model")
            tok = load_tokenizer(tmp / "model")        # exactly what users of the world will load
            model = build_model(cfg, len(tok))
            stats = pretrain(model, tok, texts["pretrain_docs"], cfg, progress=progress, fresh=fresh_texts(cfg))
            model.save_pretrained(tmp / "model")
            probes = base_probes(tmp, model, tok)
        finally:
            torch.set_num_threads(threads)
        info = {"key": key, "content_hash": content_hash(tmp), "config": cfg.to_dict(), "sizes": texts["sizes"],
                "parameters": sum(p.numel() for p in model.parameters()), "pretrain": stats,
                "base_probes": probes, "build_seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "world.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return out


def base_probes(world: Path, model, tokenizer) -> dict[str, float]:
    """The study's three probes (all questions/lines of the world) on the fresh base model."""
    from ..probes import run_probes

    src = f"world:{world}"
    specs = [{"task": t, "source": src, "limit": 0} for t in ("medmcqa", "triviaqa", "wikitext")]
    return {k: round(r.value, 4) for k, r in run_probes(model, tokenizer, specs, batch_size=32).items()}


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive file lock, so concurrent builders of one world wait for each other."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
