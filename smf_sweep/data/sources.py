"""One function turns a *source* string into a `datasets.Dataset` split (docs/contracts.md).

    read_split("openlifescienceai/medmcqa", "validation", spec=MEDMCQA)   # the hub
    read_split("hub", "validation", spec=MEDMCQA)                         # the same: the spec's hub id
    read_split("world:/tmp/w", "validation", spec=MEDMCQA)                # /tmp/w/data/medmcqa/validation.jsonl
    read_split("/data/medmcqa", "validation", spec=MEDMCQA)               # save_to_disk dir or <split>.jsonl/.parquet
    read_split("/data/val.parquet", "validation", spec=MEDMCQA)           # one file, used for any split

Every failure (no such path, a split that is not there, a file that does not parse, a missing
column) is a `DataError` naming the dataset, the path and the split or column(s).
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..hub import WORLD_PREFIX, is_hub_id

HUB = "hub"  # the literal source "hub" means the dataset's own hub id
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """A dataset could not be read as asked; the message names dataset, path and split/column."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a loader needs to know about one dataset (all fields immutable)."""
    name: str                      # human name used in messages, e.g. "MedMCQA"
    hub_id: str                    # used for source "hub"
    world_subdir: str              # <world>/data/<world_subdir>/
    columns: tuple[str, ...]       # required; "a.b" is field b of struct column a
    hub_config: str | None = None  # `name=` of datasets.load_dataset


def read_split(source: str, split: str, *, spec: DatasetSpec, hub_config: str | None = None) -> datasets.Dataset:
    """The `split` of the dataset at `source`, schema-checked against `spec.columns`."""
    kind, where = resolve_source(source, spec)
    if kind == "hub":
        config = hub_config or spec.hub_config
        ds = _read_hub(where, config, split, spec)
        where = f"hub dataset {where}" + (f" ({config})" if config else "") + f" split {split!r}"
    elif kind == "file":
        ds = _read_file(Path(where), spec)
    else:
        ds, where = _read_dir(Path(where), split, spec)
    check_columns(ds, spec, where)
    return ds


def resolve_source(source: str, spec: DatasetSpec) -> tuple[str, str]:
    """("hub", hub_id) | ("file", path) | ("dir", path). Local paths must exist."""
    if not isinstance(source, str) or not source:
        raise DataError(f"{spec.name}: empty or non-string source {source!r}")
    if source == HUB:
        return "hub", spec.hub_id
    if source.startswith(WORLD_PREFIX):
        world = Path(source[len(WORLD_PREFIX):]).expanduser()
        if not world.is_dir():
            raise DataError(f"{spec.name}: world directory {world} does not exist (source {source!r})")
        where = world / "data" / spec.world_subdir
        if not where.is_dir():
            raise DataError(f"{spec.name}: world {world} has no {where.relative_to(world)}/ (source {source!r})")
        return "dir", str(where)
    path = Path(source).expanduser()
    if path.is_file():
        return "file", str(path)
    if path.is_dir():
        return "dir", str(path)
    if not is_hub_id(source):          # not there and not a hub id: a mistyped path
        raise DataError(f"{spec.name}: no such file or directory: {path}")
    return "hub", source


def _read_hub(hub_id: str, config: str | None, split: str, spec: DatasetSpec) -> datasets.Dataset:
    try:
        return datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, unknown id, unknown split: all become one readable error
        raise DataError(f"{spec.name}: cannot load split {split!r} of hub dataset {hub_id!r}"
                        f"{f' (config {config!r})' if config else ''}: {type(e).__name__}: {e}") from e


def _read_file(path: Path, spec: DatasetSpec, files: list[str] | None = None) -> datasets.Dataset:
    builder = FILE_BUILDERS.get(path.suffix)
    if builder is None:
        raise DataError(f"{spec.name}: {path}: unsupported file type {path.suffix!r}; "
                        f"expected one of {', '.join(FILE_BUILDERS)}")
    try:
        return datasets.load_dataset(builder, data_files=files or [str(path)], split="train")
    except Exception as e:
        raise DataError(f"{spec.name}: cannot read {path}: {type(e).__name__}: {e}") from e


def _read_dir(path: Path, split: str, spec: DatasetSpec) -> tuple[datasets.Dataset, str]:
    """The split's rows and the file (or directory) they came from."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _read_saved(path, split, spec), f"{path} (save_to_disk, split {split!r})"
    for ext in (".jsonl", ".json", ".parquet"):
        if (path / f"{split}{ext}").is_file():
            return _read_file(path / f"{split}{ext}", spec), str(path / f"{split}{ext}")
    shards = sorted(glob.glob(glob.escape(str(path / f"{split}-")) + "*.parquet"))
    if shards:
        return _read_file(Path(shards[0]), spec, files=shards), f"{shards[0]} (+{len(shards) - 1} more shard(s))"
    raise DataError(f"{spec.name}: no split {split!r} in {path}; available splits: "
                    f"{', '.join(local_splits(path)) or 'none (no .jsonl/.json/.parquet files)'}")


def _read_saved(path: Path, split: str, spec: DatasetSpec) -> datasets.Dataset:
    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{spec.name}: cannot read save_to_disk directory {path}: {type(e).__name__}: {e}") from e
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataError(f"{spec.name}: no split {split!r} in {path}; available splits: {', '.join(sorted(saved))}")
        return saved[split]
    return saved  # one saved Dataset, like one file, serves any split


def local_splits(path: Path) -> list[str]:
    """Split names that a directory of files offers (`validation.jsonl`, `train-00000-of-00002.parquet`)."""
    names = set()
    for f in path.iterdir():
        if f.suffix in FILE_BUILDERS:
            stem = f.stem
            names.add(stem.split("-", 1)[0] if f.suffix == ".parquet" else stem)
    return sorted(names)


def check_columns(ds: datasets.Dataset, spec: DatasetSpec, where: str) -> None:
    """Raise DataError naming every required column (or struct field) that `ds` lacks."""
    missing = [c for c in spec.columns if not _has_column(ds.features, c)]
    if missing:
        raise DataError(f"{spec.name}: {where} lacks column(s) {', '.join(missing)}; "
                        f"it has {', '.join(ds.column_names)}")


def _has_column(features: Any, dotted: str) -> bool:
    node = features
    for part in dotted.split("."):
        if isinstance(node, datasets.List):
            node = node.feature  # list of structs: look inside the element type
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
