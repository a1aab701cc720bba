"""Memory layers for Sparse Memory Finetuning: layer, insertion, counting, selectors, optimizers.

Sits below the training loop and never imports it. See SMF_SPEC.md §2–4 and `updater.py` for
the call order a training loop follows.
"""
from .counting import (BACKGROUND_FILE, AccessRecorder, BackgroundStats, LayerBackground, StaleBackground,
                       addressing_fingerprint, compute_background, count_accesses)
from .insert import (MemoryMLP, freeze_for_retrofit, freeze_for_sparse, insert_memory, load_memory, memory_config,
                     memory_layers, memory_params, save_memory, value_params)
from .layer import MODES, MemoryConfig, ProductKeyAddress, ProductKeyMemory, memory_param_count
from .optim import OPTIMIZERS, LeakyAdamW, RowAdamW, RowMasked, RowSGD
from .selectors import SELECTORS, select_rows
from .updater import GRANULARITIES, SparseUpdater

__all__ = [
    "AccessRecorder", "BACKGROUND_FILE", "BackgroundStats", "GRANULARITIES", "LayerBackground", "LeakyAdamW",
    "MODES", "MemoryConfig", "MemoryMLP", "OPTIMIZERS", "ProductKeyAddress", "ProductKeyMemory", "RowAdamW",
    "RowMasked", "RowSGD", "SELECTORS", "SparseUpdater", "StaleBackground", "addressing_fingerprint",
    "compute_background", "count_accesses", "freeze_for_retrofit", "freeze_for_sparse", "insert_memory",
    "load_memory", "memory_config", "memory_layers", "memory_param_count", "memory_params", "save_memory",
    "select_rows", "value_params",
]
