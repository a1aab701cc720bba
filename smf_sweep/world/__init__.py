"""The embedded world: a small, deterministic study world that runs on a CPU (DESIGN.md).

    python -m smf_sweep.world build [--out DIR] [--seed N]
"""
from .build import build_world, cache_root, content_hash, default_world_dir, world_key
from .config import TINY, WorldConfig

__all__ = ["TINY", "WorldConfig", "build_world", "cache_root", "content_hash", "default_world_dir", "world_key"]
