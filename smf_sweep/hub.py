"""The one rule for "is this string a Hugging Face hub id?", used by the model loader (models.py), the
data sources (data/sources.py) and the spec's path checks (spec.py).

    is_hub_id("Qwen/Qwen2.5-0.5B-Instruct")   # True: owner/name
    is_hub_id("wikitext")                     # True: a bare (canonical) id
    is_hub_id("./data/mq"), is_hub_id("world:/tmp/w"), is_hub_id("a//b")   # False

The id's syntax is huggingface_hub's own validator (what `from_pretrained` / `load_dataset` apply);
on top of it, a local path (starting with / . ~, or existing on disk) and a `world:` source are never
hub ids, even where the syntax would allow one (a relative directory `data` that exists).
"""
from __future__ import annotations

from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

WORLD_PREFIX = "world:"                # the embedded world's sources (docs/contracts.md, Data sources)


def is_hub_id(s: str) -> bool:
    """True when `s` names a hub repository rather than something on this machine."""
    if not isinstance(s, str) or s.startswith(("/", ".", "~", WORLD_PREFIX)) or Path(s).exists():
        return False
    try:
        validate_repo_id(s)
    except HFValidationError:
        return False
    return True
