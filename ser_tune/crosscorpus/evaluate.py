"""The evaluation: a tuned model on each target beside its baselines, and a study's at its end."""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.labels import LabelMapper
from ..training.ensemble import best_member, is_ensemble
from ..training.settings import FRAME_HEADS
from .baselines import predict_head, random_head_baseline, scores, source_baseline
from .features import OriginalFeatures, embed_files, encoder_fine_tuned, normalized_features
from .report import write_outputs
from .source import resolve_source, study_source
from ..study.folder import StudyFolder
from .targets import CrossCorpusError, check_target, load_target, target_key

RANDOM_SEEDS = 5


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
    from ..training.export import ModelFolderError, load_model

    if not isinstance(random_seeds, int) or random_seeds < 1:
        raise CrossCorpusError(f"random_seeds: must be a positive integer, got {random_seeds!r}")
    model_dir = Path(model_dir).expanduser().resolve()
    if not model_dir.is_dir():
        raise CrossCorpusError(f"{model_dir}: model folder not found")
    ensemble_note = []
    if is_ensemble(model_dir):   # evaluation here reads one head: the ensemble's best configuration
        model_dir = model_dir / best_member(model_dir)
        ensemble_note = [f"the model is an ensemble: its best configuration alone ({model_dir.name}) is evaluated"]
    if not isinstance(targets, (list, tuple)) or not targets:
        raise CrossCorpusError("targets: give at least one target corpus {name, root, label_map}")
    checked = [check_target(t, f"targets[{i}]") for i, t in enumerate(targets)]
    source = resolve_source(source) if source is not None else None
    try:
        model = load_model(model_dir)
    except (ModelFolderError, OSError, KeyError) as err:
        raise CrossCorpusError(f"{model_dir}: cannot load the model ({err})") from None
    labels = list(model.labels)
    if not getattr(model, "n_classes", len(labels)):
        raise CrossCorpusError(f"{model_dir}: this model predicts emotion dimensions only, not categories; "
                               "cross-corpus evaluation needs categories")
    head = model.meta.get("settings", {}).get("head")
    if head in FRAME_HEADS:
        raise CrossCorpusError(f"{model_dir}: its {head} head reads frames; cross-corpus "
                               "evaluation reads pooled features (models with a linear, mlp or logreg head)")
    mapper = LabelMapper(labels)
    notes = list(ensemble_note)
    if source is None:
        source = study_source(model.meta)
        if source is None:
            notes.append("frozen-feature baseline skipped: no source corpus (model.json names no study; "
                         "give --source-corpus/--source-root)")

    with tempfile.TemporaryDirectory(prefix="ser_tune_crosscorpus_") as tmp:
        cache = Path(cache_root or (source or {}).get("cache_root") or tmp)
        original = OriginalFeatures(model.meta["encoder"], model.sample_rate, model.max_length, cache)
        fine_tuned = encoder_fine_tuned(model, original.encoder())
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
            key = target_key(target["name"], set(result["targets"]))
            result["targets"][key] = evaluate_target(model, target, mapper, frozen, original, fine_tuned,
                                                      result["random_seeds"], embedded)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def whole_corpus_pooled(original: OriginalFeatures, table: pd.DataFrame) -> np.ndarray:
    """The original encoder's pooled features of every clip of the target corpus, in its table order: the
    cache entry a study of that corpus makes, so neither encodes it twice (clips the model's labels leave
    out are encoded too, for that reuse)."""
    return original.pooled([str(p) for p in table["path"]], table["duration"].to_numpy(float))


def evaluate_target(model, target, mapper, frozen, original, fine_tuned, seeds, embedded: dict) -> dict:
    labels = mapper.labels
    table, info = load_target(target, mapper)
    excluded = table[table["model_label"].isna()]
    rows = np.flatnonzero(table["model_label"].notna().to_numpy())   # the used clips' rows in the whole table
    used = table.iloc[rows].reset_index(drop=True)
    entry = {**info, "files": 0, "excluded": int(len(excluded)),
             "excluded_labels": {str(k): int(v) for k, v in sorted(Counter(excluded["label"]).items())}}
    full = None
    if fine_tuned:
        feats, kept, failed = embed_files(model, [str(p) for p in used["path"]], embedded)
    else:   # the tuned model's encoder is the original (cut where the model's was): the cached features
        full = whole_corpus_pooled(original, table)[rows]
        feats = full[:, : model.encoder.num_layers + 1]
        kept, failed = list(range(len(used))), []
    entry["skipped"] += len(failed)
    entry["skipped_examples"] = (entry["skipped_examples"] + failed)[:5]
    used, rows = used.iloc[kept].reset_index(drop=True), rows[kept]
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
    tuned = predict_head(model.head, head_input, len(labels))
    entry.update(scores(y, tuned, len(labels)))

    predictions = pd.DataFrame({"path": used["path"].astype(str), "speaker": used["speaker"].astype(str),
                                "native_label": used["label"], "label": used["model_label"],
                                "predicted": [labels[i] for i in tuned]})
    details = {"random_head": random_head_baseline(model, head_input, y, labels, seeds, predictions)}
    if frozen is not None:
        # The probe reads any layer of the original encoder: a head-only model's cached features are those.
        base = full if full is not None else whole_corpus_pooled(original, table)[rows]
        pred = frozen.predict(normalized_features(base, speakers, model.normalize))
        predictions["frozen_head"] = [labels[i] for i in pred]
        details["frozen_head"] = {
            **scores(y, pred, len(labels)),
            "classifier": "linear probe: logistic regression (class-balanced) on one layer's standardised "
                          "features, layer and C by source speaker CV", "layer": frozen.layer, "C": frozen.C,
            "features": f"original encoder weights, per-layer pooled, normalize={model.normalize} "
                        "(each corpus its own statistics)"}
    entry["baselines"] = {"random_head": details["random_head"]["bca_mean"],
                          "frozen_head": details["frozen_head"]["bca"] if frozen is not None else None}
    entry["baseline_details"] = details
    entry["predictions"] = predictions.to_dict("records")
    return entry


def run_for_study(study_dir, experiment_crosscorpus_list: list[dict], *, seed: int = 0) -> dict:
    """Evaluate STUDY_DIR/best_model on every corpus the config lists; writes STUDY_DIR/crosscorpus.json,
    crosscorpus.md and the PNGs/CSVs. An empty list writes nothing and returns {}."""
    study_dir = Path(study_dir).expanduser().resolve()
    if not experiment_crosscorpus_list:
        return {}
    model_dir = StudyFolder(study_dir).best_model_dir
    if not (model_dir / "model.json").is_file() and not is_ensemble(model_dir):
        raise CrossCorpusError(f"{model_dir}: the study exported no best model (no finished trial?)")
    targets = []
    for i, item in enumerate(experiment_crosscorpus_list):
        if not isinstance(item, dict) or item.get("root") is None:
            raise CrossCorpusError(f"crosscorpus[{i}].root: no folder given for the cross-corpus target")
        targets.append({k: item.get(k) for k in ("name", "root", "label_map")})
    return evaluate_cross_corpus(model_dir, targets, source={"study": str(study_dir)}, out_dir=study_dir,
                                 seed=seed)
