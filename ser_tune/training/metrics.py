"""Metrics: balanced class accuracy (BCA = mean per-class recall) and the confusion matrix,
from scikit-learn; concordance correlation coefficient for dimensional targets."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix


def bca(y_true, y_pred) -> float:
    """Mean recall over the classes present in ``y_true``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when a predicted class is absent from y_true
        return float(balanced_accuracy_score(y_true, y_pred))


def confusion(y_true, y_pred, num_classes: int) -> list[list[int]]:
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist()


def ccc(x, y) -> float:
    """Lin's concordance correlation coefficient: 1 identical, 0 for a constant prediction, < 0 anti-correlated."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
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
