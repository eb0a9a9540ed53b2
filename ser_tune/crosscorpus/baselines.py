"""The heads a target is scored with besides the tuned one: untrained random heads of its kind, and the
linear probe on the source's frozen features; and the scores they share (BCA, accuracy, confusion)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.labels import LabelMapper
from .features import OriginalFeatures, normalized_features
from .source import source_training_set


def predict_head(head, feats: np.ndarray, n_classes: int, batch: int = 256) -> np.ndarray:
    """Class indices; a multi-task head's outputs are the class logits first, then dimensions."""
    import torch

    head.eval()
    out = []
    with torch.no_grad():
        for b in range(0, len(feats), batch):
            out.append(head(torch.from_numpy(feats[b: b + batch]))[:, :n_classes].argmax(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def random_head(model, seed: int):
    """An untrained head of the tuned model's kind (class outputs only), initialised from ``seed``
    (global RNG untouched).

    Its normalisation holds no statistics yet (mean 0, variance 1), so it sees the raw features.
    """
    import torch

    from ..training.export import head_of

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = head_of(model.meta, len(model.labels))
    return head.eval()


def fit_frozen_baseline(pooled: np.ndarray, rows: pd.DataFrame, y: np.ndarray, normalize: str, seed: int):
    """The linear probe on the source's frozen features: its layer and C chosen by speaker
    cross-validation on the source (one layer, not every layer at once, which fits the source's own
    recording conditions), features normalised as the model's are."""
    from ..data import speaker_folds
    from ..training.probe import linear_probe

    x = normalized_features(pooled, rows["speaker"].astype(str).to_numpy(), normalize)
    table = rows.reset_index(drop=True)
    k = min(4, table["speaker"].nunique())
    if k >= 2:
        folds = [(np.flatnonzero(~held), np.flatnonzero(held)) for held in speaker_folds(table, k, seed=seed)]
    else:   # one source speaker: half its clips validate the other half
        order = np.random.default_rng(seed).permutation(len(table))
        folds = [(order[len(order) // 2:], order[: len(order) // 2])]
    return linear_probe(x, y, folds, train=np.arange(len(table)), test=np.zeros(0, np.int64), seed=seed)


def source_baseline(model, source: dict | None, mapper: LabelMapper, original: "OriginalFeatures", seed: int,
                    notes: list[str]):
    """(the frozen-feature baseline fitted on the source, the source's description), or (None, ...)
    with a note saying why there is none."""
    if source is None:
        return None, None
    table, rows, info = source_training_set(source, mapper)
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


def random_head_baseline(model, head_input, y, labels, seeds, predictions: pd.DataFrame) -> dict:
    """The model's head re-initialised with each seed: what chance looks like for this architecture."""
    random_scores = []
    for s in seeds:
        pred = predict_head(random_head(model, s), head_input, len(labels))
        predictions[f"random_head_s{s}"] = [labels[i] for i in pred]
        random_scores.append(scores(y, pred, len(labels)))
    bcas = [r["bca"] for r in random_scores]
    return {"seeds": list(seeds), "bca_per_seed": bcas, "bca_mean": float(np.mean(bcas)),
            "bca_std": float(np.std(bcas)), "accuracy_mean": float(np.mean([r["accuracy"] for r in random_scores]))}


def scores(y_true, y_pred, num_classes: int) -> dict:
    """BCA (mean recall over the classes present in y_true), accuracy and the full confusion matrix."""
    from ..training.metrics import bca, confusion

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {"bca": bca(y_true, y_pred), "accuracy": float((y_true == y_pred).mean()),
            "confusion": confusion(y_true, y_pred, num_classes)}
