"""Emotion labels: corpus codes -> native names -> a view's classes, all read from label_maps.yaml."""
from __future__ import annotations

import copy
import functools
from importlib import resources

import numpy as np
import pandas as pd
import yaml

from .errors import DataError

EMOTIONS = ("anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness")

_MAPS_FILE = "label_maps.yaml"


@functools.lru_cache(maxsize=1)
def _load_maps() -> dict:
    text = resources.files(__package__).joinpath(_MAPS_FILE).read_text(encoding="utf-8")
    maps = yaml.safe_load(text)
    for section in ("codes", "aliases", "views", "defaults"):
        if not isinstance(maps.get(section), dict):
            raise DataError(f"{_MAPS_FILE}: missing section '{section}'")
    return maps


def label_maps() -> dict:
    """The parsed label_maps.yaml (a deep copy: callers may not edit the shared one)."""
    return copy.deepcopy(_load_maps())


def view_names() -> tuple[str, ...]:
    return tuple(_load_maps()["views"])


def default_view(corpus: str) -> str | None:
    """The view a corpus is read with by default; None = labels kept exactly as given (csv)."""
    defaults = _load_maps()["defaults"]
    if corpus not in defaults:
        raise DataError(f"label_maps.yaml: no default view for corpus '{corpus}'")
    return defaults[corpus]


def check_view(view: str) -> str:
    if view not in _load_maps()["views"]:
        raise DataError(f"label_map: unknown view '{view}' (known: {', '.join(view_names())})")
    return view


def code_table(corpus: str) -> dict[str, str]:
    """Emotion code -> native name for a corpus ({} for corpora without codes, e.g. csv)."""
    return dict(_load_maps()["codes"].get(corpus, {}))


def native_name(label, corpus: str) -> str | None:
    """A corpus code or a native name / alias -> the native name; None when unknown."""
    if label is None or (isinstance(label, float) and np.isnan(label)):
        return None
    text = str(label).strip()
    maps = _load_maps()
    codes = maps["codes"].get(corpus, {})
    if text in codes:
        return codes[text]
    if text in codes.values():
        return text
    return maps["aliases"].get(text.lower())


def view_label(native: str, view: str) -> str | None:
    """A native name -> the view's class; None when the view has no counterpart."""
    check_view(view)
    mapping = _load_maps()["views"][view]
    return mapping.get(native) if mapping else native   # an empty mapping is the identity view


def map_labels(labels: pd.Series, corpus: str, view: str) -> pd.Series:
    """Map corpus codes or native names to `view`'s classes; unmapped -> NaN (caller drops and counts).

    In the "native" view, labels that are not known codes or names are kept as given (a user's
    own classes); in any other view they become NaN.
    """
    check_view(view)
    identity = not _load_maps()["views"][view]

    def one(label):
        native = native_name(label, corpus)
        if native is None:
            if identity and isinstance(label, str) and label.strip():
                return label.strip()
            return np.nan
        mapped = view_label(native, view)
        return np.nan if mapped is None else mapped

    return pd.Series([one(v) for v in labels], index=labels.index, dtype=object, name=labels.name)


def label_key(label) -> str:
    """The canonical emotion of a label (aliases of label_maps.yaml), else the label itself."""
    return native_name(label, "csv") or str(label).strip()


class LabelMapper:
    """Labels -> a model's label space (exact name first, then the same canonical emotion)."""

    def __init__(self, model_labels: list[str]):
        self.labels = list(model_labels)
        self._by_key: dict[str, str] = {}
        for label in self.labels:
            self._by_key.setdefault(label_key(label), label)

    def __call__(self, label) -> str | None:
        if not isinstance(label, str):
            return None
        if label in self.labels:
            return label
        return self._by_key.get(label_key(label))


def pick_view(corpus: str, model_labels: list[str]) -> str | None:
    """The label view to read `corpus` with for a model trained on `model_labels`.

    Among the views that give the corpus's native classes a counterpart, the one whose classes
    cover most of the model's labels; then the one that brings most of the corpus's native
    classes onto a model label (IEMOCAP's excitement -> happiness); then the "native" view. E.g.
    an EmoDB-trained model reads RAVDESS through emodb7 (calm -> boredom); a RAVDESS-native model
    reads EmoDB natively. A corpus without emotion codes (a CSV manifest) keeps its default.
    """
    natives = sorted(set(code_table(corpus).values()))
    if not natives:
        return default_view(corpus)
    mapper = LabelMapper(model_labels)
    best, best_key = None, None
    for view in view_names():
        classes = {n: view_label(n, view) for n in natives}
        classes = {n: c for n, c in classes.items() if c is not None}
        if not classes:
            continue
        on_model = {n: mapper(c) for n, c in classes.items() if mapper(c) is not None}
        key = (len(set(on_model.values())), len(on_model), view == "native")
        if best_key is None or key > best_key:
            best, best_key = view, key
    return best
