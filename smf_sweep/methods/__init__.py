"""Finetuning methods, registered by name. A new method = one file + one line here.

    from smf_sweep.methods import METHODS
    method = METHODS["lora"]            # an object with .name, .Config and .setup(model, cfg, ctx)
"""
from ..registry import Registry
from .base import Method, SetupContext
from .full import Full
from .lora import Lora
from .smf import SMF

METHODS: Registry = Registry("method")
for _m in (SMF(), Lora(), Full()):
    METHODS.register(_m.name)(_m)

__all__ = ["METHODS", "Method", "SetupContext"]
