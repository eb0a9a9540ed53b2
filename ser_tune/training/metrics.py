"""Metrics: balanced class accuracy (BCA = mean per-class recall) and the confusion matrix;
concordance correlation coefficient for dimensional targets.

BCA and the confusion matrix are scikit-learn's ``balanced_accuracy_score`` and ``confusion_matrix``
(tests/test_metrics.py holds them equal on random labels, absent classes included), written out in
numpy: every trial scores every epoch with them, and importing ``sklearn.metrics`` (scipy.stats with it)
costs each new trial worker about 1 CPU-second before its first epoch.
"""
from __future__ import annotations

import numpy as np


def bca(y_true, y_pred) -> float:
    """Mean recall over the classes present in ``y_true`` (a predicted class absent from it adds none)."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape or not len(y_true):
        raise ValueError(f"bca: {len(y_true)} true labels against {len(y_pred)} predictions")
    recalls = [np.mean(y_pred[y_true == label] == label) for label in np.unique(y_true)]
    return float(np.mean(recalls))


def class_probabilities_of(scores) -> np.ndarray:
    """Row-wise softmax, in float64, of class scores (N, classes): what a model's class scores say."""
    scores = np.asarray(scores, dtype=np.float64)
    odds = np.exp(scores - scores.max(axis=1, keepdims=True))
    return odds / odds.sum(axis=1, keepdims=True)


def confusion(y_true, y_pred, num_classes: int) -> list[list[int]]:
    """Counts of (true class, predicted class) over the classes 0..num_classes-1; other labels are left out."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    known = (y_true >= 0) & (y_true < num_classes) & (y_pred >= 0) & (y_pred < num_classes)
    cells = np.bincount(y_true[known] * num_classes + y_pred[known], minlength=num_classes * num_classes)
    return cells.reshape(num_classes, num_classes).tolist()


def ccc(x, y) -> float:
    """Lin's concordance correlation coefficient: 1 identical, 0 for a constant prediction, < 0 anti-correlated."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    denom = vx + vy + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def ccc_loss(pred, target):
    """1 - CCC per column, averaged: the differentiable loss for dimensional targets (torch tensors)."""
    mp, mt = pred.mean(0), target.mean(0)
    vp, vt = pred.var(0, unbiased=False), target.var(0, unbiased=False)
    cov = ((pred - mp) * (target - mt)).mean(0)
    return (1 - 2 * cov / (vp + vt + (mp - mt) ** 2 + 1e-8)).mean()
