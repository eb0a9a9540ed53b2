"""The corpus the frozen-feature baseline trains on: given, or the model's study's (its corpus, train
split and feature cache, read through the study folder)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data import load_corpus
from ..data.labels import LabelMapper
from ..study.folder import SPLIT_FILE, STUDY_FILE, StudyFolder, StudyFormatError
from ..study.prepare import cache_root
from .targets import CrossCorpusError, check_target


def study_source(model_meta: dict) -> dict | None:
    """The corpus and training speakers the model was trained on: model.json's "source" (every model
    folder written by this version), else its study's study.json; None if unknown."""
    if model_meta.get("source"):
        return dict(model_meta["source"])
    study = model_meta.get("study")
    if not study or not (Path(study) / STUDY_FILE).is_file():
        return None
    try:
        folder = StudyFolder.open(study)
    except StudyFormatError as err:
        raise CrossCorpusError(f"unreadable study file: {err}") from None
    corpus = folder.meta.get("corpus") or {}
    if not corpus.get("name") or not corpus.get("root"):
        return None
    exp_corpus = folder.experiment.get("corpus") or {}
    storage = folder.experiment.get("storage")
    return {"name": corpus["name"], "root": corpus["root"], "label_map": exp_corpus.get("label_map"),
            "options": exp_corpus.get("options") or {}, "split_file": str(folder.dir / SPLIT_FILE),
            "cache_root": str(cache_root(storage)) if storage else None, "study": str(study)}


def resolve_source(source: dict) -> dict:
    """{name, root, label_map} (all clips) or {study: STUDY_DIR} (that study's corpus and train split)."""
    if not isinstance(source, dict):
        raise CrossCorpusError(f"source: expected {{name, root, label_map}} or {{study}}, got {source!r}")
    if "study" in source:
        study = Path(source["study"]).expanduser().resolve()
        found = study_source({"study": str(study)})
        if found is None:
            raise CrossCorpusError(f"source.study: {study}: no study.json naming the study's corpus")
        return found
    checked = check_target({k: source.get(k) for k in ("name", "root", "label_map")}, "source")
    return {**checked, "root": str(checked["root"])}


def source_training_set(source: dict, mapper: LabelMapper) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(full table as the study loaded it, the rows to train on with model labels, description)."""
    from ..data import Split

    root = Path(source["root"]).expanduser().resolve()
    if not root.exists():
        raise CrossCorpusError(f"source root: {root}: corpus folder not found (corpus '{source['name']}')")
    options = source.get("options") or {}
    corpus = load_corpus(source["name"], root, label_map=source.get("label_map"),
                         **(options if source["name"] == "synthetic" else {}))
    table = corpus.table
    rows, part = table, "all clips"
    split_file = source.get("split_file")
    if source.get("train_speakers"):
        rows = table[table["speaker"].astype(str).isin([str(x) for x in source["train_speakers"]])]
        part = "the model's training speakers"
    elif split_file and Path(split_file).is_file():
        rows = Split.load(split_file, table).part(table, "train")
        part = "the study's train split"
    rows = rows.assign(model_label=rows["label"].map(mapper))
    unmatched = int(rows["model_label"].isna().sum())
    rows = rows[rows["model_label"].notna()]
    info = {"corpus": corpus.name, "root": str(corpus.root), "label_map": source.get("label_map"),
            "clips": int(len(rows)), "part": part, "excluded": unmatched, "synthetic": bool(corpus.synthetic)}
    if source.get("study"):
        info["study"] = source["study"]
    return table, rows, info
