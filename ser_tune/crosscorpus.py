"""Cross-corpus zero-shot evaluation: a tuned model on corpora it never saw, beside two baselines.

``python -m ser_tune.crosscorpus MODEL_DIR --corpus NAME --root DIR [--label-map VIEW] ...``

Labels. Each target clip's native emotion (the corpus's own class) goes through a label view
(``--label-map``, else the view that brings most of the model's labels into play, data.pick_view:
e.g. ``emodb7`` for an EmoDB-trained model on RAVDESS, calm -> boredom; a CSV manifest's labels as given)
and then into the model's label space (same name, or the same canonical emotion under
label_maps.yaml's aliases, e.g. "angry" -> "anger"). Clips whose label has no counterpart in
the view or among the model's labels are *excluded* and counted per label. Model classes no
target clip carries are listed as ``missing_classes``; the model may still predict them, and
such predictions count as errors.

Metrics (per target, over the clips used):
- ``bca``: balanced class accuracy = sklearn's ``balanced_accuracy_score``, the mean recall over
  the classes present in the target (missing classes have no recall and do not enter the mean);
- ``accuracy``: share of clips predicted right;
- ``confusion``: counts, rows = true class, columns = predicted class, both over the model's labels.

Baselines, on the same clips:
- ``random_head``: an untrained, randomly initialised head of the model's own kind on the
  tuned model's features (the reference paper's "zero-shot" comparison); mean BCA over
  ``random_seeds`` seeds (seed, seed+1, ...), each seed's predictions kept.
- ``frozen_head``: logistic regression (standardised per-layer pooled features, class-balanced)
  trained on the *source* corpus with the encoder's ORIGINAL weights (``load_encoder(spec)``),
  applied to the targets' original-encoder features: what a frozen-feature model learns from
  the same source, without any fine-tuning. The source is ``--source-corpus/--source-root``
  (all its clips), else the model's study (``model.json`` "study" -> ``study.json``; the
  study's train-split clips, features read from the study's feature cache when present).
  Without a source the baseline is skipped, with a note.

Each target clip is embedded once: by the tuned model when fine-tuning changed its encoder, else
from the feature cache (the original encoder's features, computed once per corpus and reused); those
features serve the tuned head, the random heads and, when the encoder is unchanged, the baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from .data import AudioError, DataError, load_audio, load_corpus
from .data.corpus import CORPORA
from .data.labels import LabelMapper, check_view, pick_view, view_label
from .training.export import to_jsonable  # one JSON fallback for numpy values, shared with export

RESULT_FILE = "crosscorpus.json"
REPORT_FILE = "crosscorpus.md"
RANDOM_SEEDS = 5


class CrossCorpusError(ValueError):
    """Bad input to cross-corpus evaluation; the message names the folder, corpus or field."""


def _check_target(target: dict, at: str) -> dict:
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


# --- features ----------------------------------------------------------------------------------
def _embed_files(model, paths: list[str], memo: dict) -> tuple[np.ndarray, list[int], list[dict]]:
    """Tuned-model features (N, L+1, D) of the files that decode; their indices; the failures.

    ``memo`` (path -> features or failure) makes a file shared by several targets (one corpus
    read through two label views) cost one decode and one encoder pass.
    """
    feats, kept, failed = [], [], []
    for i, path in enumerate(paths):
        if path not in memo:
            try:
                memo[path] = model.embed(load_audio(path, model.sample_rate))[0].numpy()
            except AudioError as err:
                memo[path] = {"path": err.path, "reason": err.reason}
        if isinstance(memo[path], dict):
            failed.append(memo[path])
            continue
        feats.append(memo[path])
        kept.append(i)
    if not feats:
        return np.zeros((0, 0, 0), np.float32), kept, failed
    return np.stack(feats).astype(np.float32), kept, failed


class OriginalFeatures:
    """Frozen features from the encoder's original weights, through the shared feature cache.

    The cache key is (clip list, weights fingerprint, effective max_length): a study's own
    corpus in its table order hits the entry the study computed, so nothing is re-encoded.
    """

    def __init__(self, spec: str, sample_rate: int, max_length: float | None, cache_root: Path):
        from .encoders import spec_fingerprint
        from .encoders.cache import FeatureCache

        self.spec = spec
        self.sample_rate = sample_rate
        self.max_length = max_length
        self._encoder = None
        self.cache = FeatureCache(cache_root, spec, spec_fingerprint(spec), self.encoder)

    def encoder(self):
        if self._encoder is None:
            from .encoders import load_encoder

            self._encoder = load_encoder(self.spec)
        return self._encoder

    def pooled(self, paths: list[str], durations) -> np.ndarray:
        from .data import AudioStore, crop
        from .encoders.cache import effective_max_length

        audio = AudioStore(self.sample_rate)
        ml = effective_max_length(self.max_length, durations)
        feats = self.cache.get(list(paths), lambda i: crop(audio.get(paths[i]), ml, self.sample_rate), ml)
        return feats.pooled


def _encoder_fine_tuned(model, original) -> bool:
    """True when any encoder weight of the tuned model differs from the encoder spec's own (of the layers
    it kept, when it was exported truncated at the layer its head reads)."""
    import copy

    import torch

    tuned = model.encoder.state_dict()
    if model.encoder.num_layers < original.num_layers:
        original = copy.deepcopy(original)
        original.truncate(model.encoder.num_layers)
    for name, value in original.state_dict().items():
        if name not in tuned or tuned[name].shape != value.shape or not torch.equal(tuned[name], value):
            return True
    return set(tuned) != set(original.state_dict())


# --- heads -------------------------------------------------------------------------------------
def _predict_head(head, feats: np.ndarray, n_classes: int, batch: int = 256) -> np.ndarray:
    """Class indices; a multi-task head's outputs are the class logits first, then dimensions."""
    import torch

    head.eval()
    out = []
    with torch.no_grad():
        for b in range(0, len(feats), batch):
            out.append(head(torch.from_numpy(feats[b: b + batch]))[:, :n_classes].argmax(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _random_head(model, seed: int):
    """An untrained head of the tuned model's kind (class outputs only), initialised from ``seed``
    (global RNG untouched).

    Its normalisation holds no statistics yet (mean 0, variance 1), so it sees the raw features.
    """
    import torch

    from .training.head import EmotionHead
    from .training.settings import TrialSettings

    s = TrialSettings.from_config(model.meta["settings"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = EmotionHead(int(model.meta["num_states"]), int(model.meta["hidden_size"]), len(model.labels),
                           layer=s.layer, kind=s.head, hidden=s.head_hidden, dropout=s.dropout)
    return head.eval()


def normalized_features(pooled: np.ndarray, speakers, normalize: str) -> np.ndarray:
    """Features z-scored as a model with ``normalize`` sees them on a corpus of its own: with that
    corpus's statistics (``corpus``), each speaker's (``speaker``), or as they are (``none``)."""
    from .training.normalize import FeatureNorm

    norm = FeatureNorm.fit(normalize, pooled, speakers=speakers, rows=np.arange(len(pooled)))
    return pooled if norm is None else norm.apply(pooled, np.arange(len(pooled)))


def fit_frozen_baseline(pooled: np.ndarray, rows: pd.DataFrame, y: np.ndarray, normalize: str, seed: int):
    """The linear probe on the source's frozen features: its layer and C chosen by speaker
    cross-validation on the source (one layer, not every layer at once, which fits the source's own
    recording conditions), features normalised as the model's are."""
    from .data import speaker_folds
    from .training.probe import linear_probe

    x = normalized_features(pooled, rows["speaker"].astype(str).to_numpy(), normalize)
    table = rows.reset_index(drop=True)
    k = min(4, table["speaker"].nunique())
    if k >= 2:
        folds = [(np.flatnonzero(~held), np.flatnonzero(held)) for held in speaker_folds(table, k, seed=seed)]
    else:   # one source speaker: half its clips validate the other half
        order = np.random.default_rng(seed).permutation(len(table))
        folds = [(order[len(order) // 2:], order[: len(order) // 2])]
    return linear_probe(x, y, folds, train=np.arange(len(table)), test=np.zeros(0, np.int64), seed=seed)


# --- metrics -----------------------------------------------------------------------------------
def scores(y_true, y_pred, num_classes: int) -> dict:
    """BCA (mean recall over the classes present in y_true), accuracy and the full confusion matrix."""
    from .training.metrics import bca, confusion

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {"bca": bca(y_true, y_pred), "accuracy": float((y_true == y_pred).mean()),
            "confusion": confusion(y_true, y_pred, num_classes)}


# --- source ------------------------------------------------------------------------------------
def _study_source(model_meta: dict) -> dict | None:
    """The corpus and training speakers the model was trained on: model.json's "source" (every model
    folder written by this version), else its study's study.json; None if unknown."""
    if model_meta.get("source"):
        return dict(model_meta["source"])
    study = model_meta.get("study")
    if not study or not (Path(study) / "study.json").is_file():
        return None
    path = Path(study) / "study.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CrossCorpusError(f"{path}: unreadable study file ({err})") from None
    corpus = meta.get("corpus") or {}
    if not corpus.get("name") or not corpus.get("root"):
        return None
    exp = meta.get("experiment") or {}
    exp_corpus = exp.get("corpus") or {}
    storage = exp.get("storage")
    return {"name": corpus["name"], "root": corpus["root"], "label_map": exp_corpus.get("label_map"),
            "options": exp_corpus.get("options") or {}, "split_file": str(Path(study) / "split.json"),
            "cache_root": str(Path(storage) / "_feature_cache") if storage else None, "study": str(study)}


def _resolve_source(source: dict) -> dict:
    """{name, root, label_map} (all clips) or {study: STUDY_DIR} (that study's corpus and train split)."""
    if not isinstance(source, dict):
        raise CrossCorpusError(f"source: expected {{name, root, label_map}} or {{study}}, got {source!r}")
    if "study" in source:
        study = Path(source["study"]).expanduser().resolve()
        found = _study_source({"study": str(study)})
        if found is None:
            raise CrossCorpusError(f"source.study: {study}: no study.json naming the study's corpus")
        return found
    checked = _check_target({k: source.get(k) for k in ("name", "root", "label_map")}, "source")
    return {**checked, "root": str(checked["root"])}


def _source_training_set(source: dict, mapper: LabelMapper) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(full table as the study loaded it, the rows to train on with model labels, description)."""
    from .data import Split

    root = Path(source["root"]).expanduser().resolve()
    if not root.exists():
        raise CrossCorpusError(f"source root: {root}: corpus folder not found (corpus '{source['name']}')")
    options = source.get("options") or {}
    corpus = load_corpus(source["name"], root, label_map=source.get("label_map"),
                         **(options if source["name"] == "synthetic" else {}))
    table = corpus.table
    rows = table
    part = "all clips"
    split_file = source.get("split_file")
    if source.get("train_speakers"):
        rows = table[table["speaker"].astype(str).isin([str(x) for x in source["train_speakers"]])]
        part = "the model's training speakers"
    elif split_file and Path(split_file).is_file():
        split = Split.load(split_file, table)
        rows = split.part(table, "train")
        part = "the study's train split"
    rows = rows.assign(model_label=rows["label"].map(mapper))
    unmatched = int(rows["model_label"].isna().sum())
    rows = rows[rows["model_label"].notna()]
    info = {"corpus": corpus.name, "root": str(corpus.root), "label_map": source.get("label_map"),
            "clips": int(len(rows)), "part": part, "excluded": unmatched,
            "synthetic": bool(corpus.synthetic)}
    if source.get("study"):
        info["study"] = source["study"]
    return table, rows, info


# --- one target --------------------------------------------------------------------------------
def _load_target(target: dict, mapper: LabelMapper) -> tuple[pd.DataFrame, dict]:
    """The target's clips in the native view, with their view label and model label (None = excluded)."""
    view = target["label_map"] if target["label_map"] is not None else pick_view(target["name"], mapper.labels)
    corpus = load_corpus(target["name"], target["root"], label_map="native")
    table = corpus.table.copy()
    table["view_label"] = [view_label(n, view) if view else n for n in table["label"]]
    table["model_label"] = [mapper(v) if isinstance(v, str) else None for v in table["view_label"]]
    info = {"corpus": corpus.name, "root": str(corpus.root), "label_map": view, "synthetic": bool(corpus.synthetic),
            "skipped": len(corpus.skipped), "skipped_examples": corpus.skipped[:5]}
    return table, info


def _target_key(name: str, taken: set[str]) -> str:
    key, n = name, 1
    while key in taken:
        n += 1
        key = f"{name}_{n}"
    return key


def _file_stem(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


# --- the evaluation ----------------------------------------------------------------------------
def evaluate_cross_corpus(model_dir, targets: list[dict], *, source: dict | None = None, out_dir=None,
                          seed: int = 0, random_seeds: int = RANDOM_SEEDS, cache_root=None) -> dict:
    """Evaluate the exported model in ``model_dir`` on each target corpus ({name, root, label_map}).

    ``source`` is the corpus the frozen-feature baseline trains on: {name, root, label_map} (all
    its clips) or {study: STUDY_DIR} (that study's corpus, train split and feature cache);
    default: the model's study when model.json names one. ``cache_root``: where original-encoder
    features are cached (default: the study's feature cache, else a temporary folder). With ``out_dir``,
    writes crosscorpus.json, crosscorpus.md, one confusion PNG and one predictions CSV per target.
    Returns the result dict; each target entry also holds ``predictions`` (one dict per clip used).
    """
    from .training.export import ModelFolderError, load_model

    if not isinstance(random_seeds, int) or random_seeds < 1:
        raise CrossCorpusError(f"random_seeds: must be a positive integer, got {random_seeds!r}")
    model_dir = Path(model_dir).expanduser().resolve()
    if not model_dir.is_dir():
        raise CrossCorpusError(f"{model_dir}: model folder not found")
    if not isinstance(targets, (list, tuple)) or not targets:
        raise CrossCorpusError("targets: give at least one target corpus {name, root, label_map}")
    checked = [_check_target(t, f"targets[{i}]") for i, t in enumerate(targets)]
    if source is not None:
        source = _resolve_source(source)
    try:
        model = load_model(model_dir)
    except (ModelFolderError, OSError, KeyError) as err:
        raise CrossCorpusError(f"{model_dir}: cannot load the model ({err})") from None
    labels = list(model.labels)
    if not getattr(model, "n_classes", len(labels)):
        raise CrossCorpusError(f"{model_dir}: this model predicts emotion dimensions only, not categories; "
                               "cross-corpus evaluation needs categories")
    mapper = LabelMapper(labels)
    notes = []
    if source is None:
        source = _study_source(model.meta)
        if source is None:
            notes.append("frozen-feature baseline skipped: no source corpus (model.json names no study; "
                         "give --source-corpus/--source-root)")

    with tempfile.TemporaryDirectory(prefix="ser_tune_crosscorpus_") as tmp:
        cache = Path(cache_root or (source or {}).get("cache_root") or tmp)
        original = OriginalFeatures(model.meta["encoder"], model.sample_rate, model.max_length, cache)
        fine_tuned = _encoder_fine_tuned(model, original.encoder())
        frozen, source_info = source_baseline(model, source, mapper, original, seed, notes)

        result = {"model": str(model_dir), "encoder": model.meta["encoder"], "labels": labels,
                  "encoder_fine_tuned": fine_tuned, "sample_rate": model.sample_rate,
                  "max_length": model.max_length, "seed": seed,
                  "random_seeds": list(range(seed, seed + random_seeds)), "source": source_info,
                  "bca_definition": "sklearn balanced_accuracy_score: mean recall over the classes present "
                                    "in the target; predicted classes the target lacks count as errors",
                  "notes": notes, "targets": {}}
        embedded: dict = {}
        for target in checked:
            key = _target_key(target["name"], set(result["targets"]))
            result["targets"][key] = _evaluate_target(model, target, mapper, frozen, original, fine_tuned,
                                                      result["random_seeds"], embedded)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def source_baseline(model, source: dict | None, mapper: LabelMapper, original: "OriginalFeatures", seed: int,
                    notes: list[str]):
    """(the frozen-feature baseline fitted on the source, the source's description), or (None, ...)
    with a note saying why there is none."""
    if source is None:
        return None, None
    table, rows, info = _source_training_set(source, mapper)
    if rows["model_label"].nunique() < 2:
        notes.append(f"frozen-feature baseline skipped: the source has {rows['model_label'].nunique()} "
                     "class(es) in the model's labels")
        return None, info
    pooled = original.pooled([str(p) for p in table["path"]], table["duration"].to_numpy(float))
    at = table.index.get_indexer(rows.index)
    y = rows["model_label"].map({label: i for i, label in enumerate(mapper.labels)}).to_numpy(np.int64)
    frozen = fit_frozen_baseline(pooled[at], rows, y, model.normalize, seed)
    info.update(classes=sorted(rows["model_label"].unique().tolist()), probe_layer=frozen.layer, probe_C=frozen.C,
                probe_cv_bca=frozen.cv_bca)
    return frozen, info


def _random_head_baseline(model, head_input, y, labels, seeds, predictions: pd.DataFrame) -> dict:
    """The model's head re-initialised with each seed: what chance looks like for this architecture."""
    random_scores = []
    for s in seeds:
        pred = _predict_head(_random_head(model, s), head_input, len(labels))
        predictions[f"random_head_s{s}"] = [labels[i] for i in pred]
        random_scores.append(scores(y, pred, len(labels)))
    bcas = [r["bca"] for r in random_scores]
    return {"seeds": list(seeds), "bca_per_seed": bcas, "bca_mean": float(np.mean(bcas)),
            "bca_std": float(np.std(bcas)), "accuracy_mean": float(np.mean([r["accuracy"] for r in random_scores]))}


def _evaluate_target(model, target, mapper, frozen, original, fine_tuned, seeds, embedded: dict) -> dict:
    labels = mapper.labels
    table, info = _load_target(target, mapper)
    excluded = table[table["model_label"].isna()]
    used = table[table["model_label"].notna()].reset_index(drop=True)
    entry = {**info, "files": 0, "excluded": int(len(excluded)),
             "excluded_labels": {str(k): int(v) for k, v in sorted(Counter(excluded["label"]).items())}}
    full = None
    if fine_tuned:
        feats, kept, failed = _embed_files(model, [str(p) for p in used["path"]], embedded)
    else:   # the tuned model's encoder is the original (cut where the model's was): the cached features
        full = original.pooled([str(p) for p in used["path"]], used["duration"].to_numpy(float))
        feats = full[:, : model.encoder.num_layers + 1]
        kept, failed = list(range(len(used))), []
    entry["skipped"] += len(failed)
    entry["skipped_examples"] = (entry["skipped_examples"] + failed)[:5]
    used = used.iloc[kept].reset_index(drop=True)
    present = [l for l in labels if l in set(used["model_label"])]
    entry.update({"files": int(len(used)), "classes_present": present,
                  "missing_classes": [l for l in labels if l not in present],
                  "class_counts": {l: int((used["model_label"] == l).sum()) for l in present}})
    if used.empty:
        entry.update({"bca": None, "accuracy": None, "confusion": None,
                      "baselines": {"random_head": None, "frozen_head": None}, "predictions": []})
        return entry
    index = {l: i for i, l in enumerate(labels)}
    y = used["model_label"].map(index).to_numpy(np.int64)
    speakers = used["speaker"].astype(str).to_numpy()
    head_input = normalized_features(feats, speakers, model.normalize)   # the target's own statistics
    tuned = _predict_head(model.head, head_input, len(labels))
    entry.update(scores(y, tuned, len(labels)))

    predictions = pd.DataFrame({"path": used["path"].astype(str), "speaker": used["speaker"].astype(str),
                                "native_label": used["label"], "label": used["model_label"],
                                "predicted": [labels[i] for i in tuned]})
    details = {"random_head": _random_head_baseline(model, head_input, y, labels, seeds, predictions)}
    frozen_bca = None
    if frozen is not None:
        # The probe reads any layer of the original encoder: a head-only model's cached features are those.
        base = full if full is not None else original.pooled(list(predictions["path"]),
                                                             used["duration"].to_numpy(float))
        pred = frozen.predict(normalized_features(base, speakers, model.normalize))
        predictions["frozen_head"] = [labels[i] for i in pred]
        s = scores(y, pred, len(labels))
        frozen_bca = s["bca"]
        details["frozen_head"] = {**s, "classifier": "linear probe: logistic regression (class-balanced) on one "
                                                     "layer's standardised features, layer and C by source speaker CV",
                                  "layer": frozen.layer, "C": frozen.C,
                                  "features": f"original encoder weights, per-layer pooled, normalize={model.normalize} "
                                              "(each corpus its own statistics)"}
    entry["baselines"] = {"random_head": details["random_head"]["bca_mean"], "frozen_head": frozen_bca}
    entry["baseline_details"] = details
    entry["predictions"] = predictions.to_dict("records")
    return entry


# --- outputs -----------------------------------------------------------------------------------
def _without_predictions(result: dict) -> dict:
    out = dict(result)
    out["targets"] = {k: {f: v for f, v in t.items() if f != "predictions"} for k, t in result["targets"].items()}
    return out


def write_outputs(result: dict, out_dir) -> Path:
    """crosscorpus.json (no per-clip rows), crosscorpus.md, crosscorpus_<target>_confusion.png and
    crosscorpus_<target>_predictions.csv under out_dir; the file names are recorded in the result."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key, entry in result["targets"].items():
        stem = f"crosscorpus_{_file_stem(key)}"
        if entry.get("predictions"):
            pd.DataFrame(entry["predictions"]).to_csv(out / f"{stem}_predictions.csv", index=False)
            entry["predictions_csv"] = f"{stem}_predictions.csv"
        if entry.get("confusion") is not None:
            plot_confusion(entry, result["labels"], out / f"{stem}_confusion.png", title=key)
            entry["confusion_png"] = f"{stem}_confusion.png"
    tmp = out / f"{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(_without_predictions(result), indent=2, default=to_jsonable))
    os.replace(tmp, out / RESULT_FILE)
    (out / REPORT_FILE).write_text(markdown(result))
    return out / RESULT_FILE


def plot_confusion(entry: dict, labels: list[str], path: Path, *, title: str) -> Path:
    """Rows: the classes present in the target; columns: every model class (errors into missing ones show)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(entry["confusion"])
    rows = [labels.index(l) for l in entry["classes_present"]]
    counts = matrix[rows]
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(labels), 1.2 + 0.6 * len(rows)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for r in range(len(rows)):
        for c in range(len(labels)):
            ax.text(c, r, str(counts[r, c]), ha="center", va="center",
                    color="white" if share[r, c] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), entry["classes_present"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: BCA {entry['bca']:.3f} ({entry['files']} clips)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(result: dict) -> str:
    lines = ["# Cross-corpus evaluation", "",
             f"Model: `{result['model']}` (encoder `{result['encoder']}`, "
             f"{'fine-tuned encoder layers' if result['encoder_fine_tuned'] else 'encoder unchanged, head only'}); "
             f"labels: {', '.join(result['labels'])}.", ""]
    src = result.get("source")
    if src:
        lines += [f"Source corpus (frozen-feature baseline): {src['corpus']} at `{src['root']}`, "
                  f"{src['clips']} clips ({src['part']})" + (" -- synthetic stand-in" if src.get("synthetic") else "")
                  + ".", ""]
    lines += ["BCA = balanced class accuracy: mean recall over the classes present in the target "
              "(sklearn `balanced_accuracy_score`); predictions of classes the target lacks count as errors. "
              f"Random head: untrained head on the tuned model's features, mean over seeds "
              f"{result['random_seeds']}. Frozen-feature head: logistic regression on the original encoder's "
              "features, trained on the source corpus.", "",
              "| target | files | excluded | classes present | missing classes | BCA | accuracy | "
              "random head BCA | frozen-feature head BCA |",
              "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for key, t in result["targets"].items():
        rnd = t.get("baseline_details", {}).get("random_head")
        rnd_text = f"{rnd['bca_mean']:.3f} ± {rnd['bca_std']:.3f}" if rnd else "-"
        flag = " (synthetic)" if t.get("synthetic") else ""
        lines.append(f"| {key}{flag} | {t['files']} | {t['excluded']} | {', '.join(t['classes_present']) or '-'} | "
                     f"{', '.join(t['missing_classes']) or '-'} | {_fmt(t['bca'])} | {_fmt(t['accuracy'])} | "
                     f"{rnd_text} | {_fmt(t['baselines'].get('frozen_head'))} |")
    for key, t in result["targets"].items():
        lines += ["", f"## {key}", "", f"Corpus {t['corpus']} at `{t['root']}`, label view "
                  f"`{t['label_map'] or 'as given'}`; {t['skipped']} files unusable."]
        if t["excluded_labels"]:
            lines.append("Excluded (no counterpart in the model's labels): "
                         + ", ".join(f"{k} {v}" for k, v in t["excluded_labels"].items()) + ".")
        if t.get("confusion_png"):
            lines += ["", f"![confusion matrix, {key}]({t['confusion_png']})"]
        if t.get("predictions_csv"):
            lines += ["", f"Per-clip predictions: `{t['predictions_csv']}`."]
    if result["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


# --- a study's end -----------------------------------------------------------------------------
def run_for_study(study_dir, experiment_crosscorpus_list: list[dict], *, seed: int = 0) -> dict:
    """Evaluate STUDY_DIR/best_model on every corpus the config lists; writes STUDY_DIR/crosscorpus.json,
    crosscorpus.md and the PNGs/CSVs. An empty list writes nothing and returns {}."""
    study_dir = Path(study_dir).expanduser().resolve()
    if not experiment_crosscorpus_list:
        return {}
    model_dir = study_dir / "best_model"
    if not (model_dir / "model.json").is_file():
        raise CrossCorpusError(f"{model_dir}: the study exported no best model (no finished trial?)")
    targets = []
    for i, item in enumerate(experiment_crosscorpus_list):
        if not isinstance(item, dict) or item.get("root") is None:
            raise CrossCorpusError(f"crosscorpus[{i}].root: no folder given for the cross-corpus target")
        targets.append({k: item.get(k) for k in ("name", "root", "label_map")})
    return evaluate_cross_corpus(model_dir, targets, source={"study": str(study_dir)}, out_dir=study_dir,
                                 seed=seed)


# --- command line ------------------------------------------------------------------------------
class _TargetAction(argparse.Action):
    """--corpus starts a target; --root / --label-map fill in the last one."""

    def __call__(self, parser, namespace, value, option_string=None):
        targets = getattr(namespace, "targets", None) or []
        if self.dest == "corpus":
            targets.append({"name": value, "root": None, "label_map": None})
        elif not targets:
            parser.error(f"{option_string} must follow a --corpus")
        else:
            field = "root" if self.dest == "root" else "label_map"
            if targets[-1][field] is not None:
                parser.error(f"{option_string} given twice for --corpus {targets[-1]['name']}")
            targets[-1][field] = value
        namespace.targets = targets


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ser_tune.crosscorpus", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m ser_tune.crosscorpus studies/emodb-*/best_model "
                                       "--corpus ravdess --root data/ravdess --json")
    p.add_argument("model_dir", help="an exported model folder (a study's best_model/)")
    p.add_argument("--corpus", action=_TargetAction, dest="corpus", metavar="NAME",
                   help=f"a target corpus ({', '.join(CORPORA)}); repeat for more targets")
    p.add_argument("--root", action=_TargetAction, dest="root", metavar="DIR", help="the last --corpus's folder (or CSV)")
    p.add_argument("--label-map", action=_TargetAction, dest="label_map", metavar="VIEW",
                   help="the last --corpus's label view (default: the corpus's own default)")
    p.add_argument("--source-corpus", metavar="NAME", help="corpus the frozen-feature baseline trains on "
                                                           "(default: the model's study corpus)")
    p.add_argument("--source-root", metavar="DIR")
    p.add_argument("--source-label-map", metavar="VIEW")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-seeds", type=int, default=RANDOM_SEEDS, help="seeds of the random-head baseline")
    p.add_argument("--cache", metavar="DIR", help="feature cache for the original encoder's features "
                                                  "(default: the model's study's, else a temporary folder)")
    p.add_argument("--out", metavar="DIR", help="write crosscorpus.json/.md, PNGs and prediction CSVs here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(targets=[])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from .encoders import EncoderError
    from .training.export import ModelFolderError
    from .training.settings import SettingsError
    from .training.trainable import set_threads

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if not args.targets:
        return fail("give at least one target: --corpus NAME --root DIR")
    for t in args.targets:
        if t["root"] is None:
            return fail(f"--corpus {t['name']}: no --root given")
    source = None
    if args.source_corpus or args.source_root:
        if not (args.source_corpus and args.source_root):
            return fail("--source-corpus and --source-root go together")
        source = {"name": args.source_corpus, "root": args.source_root, "label_map": args.source_label_map}
    set_threads(os.cpu_count() or 1)
    try:
        result = evaluate_cross_corpus(args.model_dir, args.targets, source=source, out_dir=args.out,
                                       seed=args.seed, random_seeds=args.random_seeds, cache_root=args.cache)
    except (CrossCorpusError, DataError, ModelFolderError, EncoderError, SettingsError, OSError) as err:
        return fail(str(err))
    if args.json:
        print(json.dumps(_without_predictions(result), default=to_jsonable))
    else:
        print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
