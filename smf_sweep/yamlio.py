"""The package's YAML reader: yaml.safe_load, except that exponents without a dot (1e-4, 3E5) are floats.
A leaf (layer 1), so that every reader of specs or of `--set FIELD=VALUE` flags (spec, the world's CLI)
reads values the same way."""
from __future__ import annotations

import re
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """PyYAML reads `1e-4` (no dot) as a string, YAML 1.2 and every researcher as a float.
    Hand-written: PyYAML has no YAML 1.2 mode, and ruamel.yaml (1.2) would be a new dependency that
    also changes other scalars (yes/no/on/off stop being booleans) in every shipped spec."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """yaml.safe_load, with exponents without a dot (1e-4, 3E5) read as floats."""
    return yaml.load(text, Loader=_Loader)
