"""Which corpora a model is evaluated on: each target checked and read, its clips' labels through a
label view into the model's labels (None: excluded); the one error of cross-corpus evaluation."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..data import DataError, load_corpus
from ..data.corpus import CORPORA
from ..data.labels import LabelMapper, check_view, pick_view, view_label


class CrossCorpusError(ValueError):
    """Bad input to cross-corpus evaluation; the message names the folder, corpus or field."""


def check_target(target: dict, at: str) -> dict:
    if not isinstance(target, dict):
        raise CrossCorpusError(f"{at}: expected a mapping {{name, root, label_map}}, got {target!r}")
    unknown = sorted(set(target) - {"name", "root", "label_map"})
    if unknown:
        raise CrossCorpusError(f"{at}: unknown field '{unknown[0]}' (fields: name, root, label_map)")
    name = target.get("name")
    if name not in CORPORA:
        raise CrossCorpusError(f"{at}.name: unknown corpus {name!r} (known: {', '.join(CORPORA)})")
    root = target.get("root")
    if root is None or str(root) == "":
        raise CrossCorpusError(f"{at}.root: no folder given for corpus '{name}'")
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise CrossCorpusError(f"{at}.root: {root}: corpus folder not found (corpus '{name}')")
    label_map = target.get("label_map")
    if label_map is not None:
        try:
            check_view(label_map)
        except DataError as err:
            raise CrossCorpusError(f"{at}.label_map: {err}") from None
    return {"name": name, "root": root, "label_map": label_map}


def load_target(target: dict, mapper: LabelMapper) -> tuple[pd.DataFrame, dict]:
    """The target's clips in the native view, with their view label and model label (None = excluded)."""
    view = target["label_map"] if target["label_map"] is not None else pick_view(target["name"], mapper.labels)
    corpus = load_corpus(target["name"], target["root"], label_map="native")
    table = corpus.table.copy()
    table["view_label"] = [view_label(n, view) if view else n for n in table["label"]]
    table["model_label"] = [mapper(v) if isinstance(v, str) else None for v in table["view_label"]]
    info = {"corpus": corpus.name, "root": str(corpus.root), "label_map": view, "synthetic": bool(corpus.synthetic),
            "skipped": len(corpus.skipped), "skipped_examples": corpus.skipped[:5]}
    return table, info


def target_key(name: str, taken: set[str]) -> str:
    key, n = name, 1
    while key in taken:
        n += 1
        key = f"{name}_{n}"
    return key


def file_stem(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)
