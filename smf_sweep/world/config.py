"""The embedded world's generator settings: one dataclass, hashed into the world's cache key."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0                      # everything (names, facts, splits, init, batches) follows from it
    # general knowledge (the forgetting probes live here)
    n_countries: int = 10              # each: capital, language, currency
    n_cities: int = 30                 # each: country, river, landmark
    n_people: int = 60                 # each: profession, birthplace, work, birth year
    article_renders: int = 4           # train articles per entity, each with its own template choices
    general_mcq_variants: int = 2      # general multiple-choice questions per fact in pretraining
    copy_texts: int = 300              # fresh texts with new random names per epoch (teach copying)
    fresh_articles: bool = True        # pretraining reads `article_renders` new renders of every article each
                                       # epoch (build.fresh_texts); off: the train split's, ~45 times over
    fresh_general: bool = True         # … and new general multiple-choice questions, general-medicine texts and
                                       # OASST replies each epoch (only the trivia lines repeat). Both off is the
                                       # first worlds' memorised corpus: its base is not converged (README, issue 15)
    # medical domain (the task; never seen in pretraining)
    n_diseases: int = 25               # each: drug, organism, organ, symptom → 4 facts (100)
    train_variants: int = 6            # train questions per fact (wording × option order × distractors)
    val_variants: int = 8              # validation questions per fact (new option sets and positions): 800
                                       # in all, so 5 pp is 2 standard errors of a difference (calibrate.py)
    # tokenizer and model (a Qwen2: same architecture as Qwen2.5, tiny)
    vocab_size: int = 2048
    hidden_size: int = 192
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 512
    # pretraining (general text only)
    seq_len: int = 256
    batch_size: int = 8                # 8 × 256 at lr 1e-3 beat 16 × 256 at 2e-3 (WORLD_NOTES)
    lr: float = 1e-3
    warmup_steps: int = 50
    steps: int = 1400                  # ≈ 2.9M tokens ≈ 5 min on 2 cores
    weight_decay: float = 0.1
    threads: int = 2                   # fixed: CPU reductions depend on the thread count

    def to_dict(self) -> dict:
        """Every field, except those added since the first worlds when they hold the first worlds'
        behaviour (`fresh_articles` off): such a world keeps its config and its key's config part."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if not (k in _ADDED and v == _ADDED[k])}

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        """The config a recorded `to_dict()` (world.json, a calibration record) was made from: an
        added field it lacks held the first worlds' behaviour, whatever today's default is."""
        return cls(**{**_ADDED, **d})

    def replace(self, **kw) -> "WorldConfig":
        return dataclasses.replace(self, **kw)


_ADDED = {"fresh_articles": False, "fresh_general": False}     # fields added after the first worlds: their behaviour


# A world small enough to build in seconds, for tests of the build machinery itself (determinism,
# caching, schemas); its model learns nothing useful.
TINY = WorldConfig(n_countries=4, n_cities=8, n_people=8, article_renders=2, n_diseases=6, vocab_size=400,
                   hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                   seq_len=64, batch_size=4, steps=6, warmup_steps=2, copy_texts=20)
