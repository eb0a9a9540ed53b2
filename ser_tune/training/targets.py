"""What a trial's head learns to predict, the loss that teaches it and the metrics that score it.

Outputs are the class logits (task ``categories`` or ``both``) followed by one value per emotion
dimension (``dimensions`` or ``both``). Dimensional targets are standardised with the training
clips' statistics; CCC does not change when the same affine map is applied to prediction and
target, so metrics are computed in that space and only the model folder maps back.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .metrics import bca, ccc, ccc_loss, confusion
from .settings import TrialSettings

Loss = Callable[[torch.Tensor, np.ndarray], "torch.Tensor | None"]


class Targets:
    """The labels of one trial's clips in the head's output layout: classes, then standardised dimensions.

    With dimensions, ``data`` must have them for some train and some validation clips (the caller checks)."""

    def __init__(self, settings: TrialSettings, data) -> None:
        self.settings = settings
        self.data = data
        self.n_classes = len(data.labels) if settings.uses_categories else 0
        self.dim_names: tuple[str, ...] = ()
        self.dim_mean = self.dim_std = np.zeros(0)
        self._dims_z = None
        if settings.uses_dimensions:   # standardised with the training clips' statistics
            train = data.dims[data.parts["train"]]
            self.dim_names = data.dim_names
            self.dim_mean = np.nanmean(train, 0)
            self.dim_std = np.nanstd(train, 0) + 1e-6
            self._dims_z = (data.dims - self.dim_mean) / self.dim_std

    @property
    def outputs(self) -> int:
        """Width of the head's output: one logit per class and one value per dimension."""
        return self.n_classes + len(self.dim_names)

    def loss_function(self, train_idx: np.ndarray) -> Loss:
        """``loss(outputs, idx)``: cross-entropy on the classes (class-weighted by the training clips when
        ``class_weighted``) plus the weighted dimensional loss; None when the batch has nothing to learn."""
        s, n_classes = self.settings, self.n_classes
        ce = nn.CrossEntropyLoss(weight=self._class_weights(train_idx)) if n_classes else None

        def loss(out: torch.Tensor, idx) -> torch.Tensor | None:
            total = ce(out[:, :n_classes], torch.from_numpy(self.data.y[idx])) if ce is not None else None
            if self.dim_names:
                target = torch.from_numpy(self._dims_z[idx].astype(np.float32))
                keep = torch.isfinite(target).all(1)
                if int(keep.sum()) >= 2:   # CCC of fewer than two clips is undefined
                    pred = out[keep, n_classes:]
                    part = ccc_loss(pred, target[keep]) if s.dimension_loss == "ccc" else \
                        nn.functional.mse_loss(pred, target[keep])
                    part = part * (s.dimension_weight if ce is not None else 1.0)
                    total = part if total is None else total + part
            return total

        return loss

    def _class_weights(self, train_idx) -> torch.Tensor | None:
        if not self.settings.class_weighted:
            return None
        counts = np.bincount(self.data.y[train_idx], minlength=self.n_classes).astype(np.float64)
        return torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(counts), 0.0),
                            dtype=torch.float32)

    def metrics(self, idx, out: np.ndarray, prefix: str) -> dict:
        """BCA on the classes and CCC per dimension (and their mean) of outputs ``out`` for clips ``idx``."""
        metrics = {}
        n_classes = self.n_classes
        if n_classes:
            metrics[f"{prefix}bca"] = bca(self.data.y[idx], out[:, :n_classes].argmax(1))
        if self.dim_names:
            target = self._dims_z[idx]
            keep = np.isfinite(target).all(1)
            values = [ccc(out[keep, n_classes + j], target[keep, j]) if keep.sum() >= 2 else float("nan")
                      for j in range(len(self.dim_names))]
            metrics.update({f"{prefix}ccc_{name}": v for name, v in zip(self.dim_names, values)})
            metrics[f"{prefix}ccc"] = float(np.nanmean(values)) if keep.sum() >= 2 else float("nan")
        return metrics

    def test_scores(self, idx, out: np.ndarray) -> tuple[dict, list[list[int]] | None, np.ndarray | None]:
        """(test metrics with accuracy, confusion matrix, predicted classes) of outputs ``out`` for clips ``idx``."""
        metrics = self.metrics(idx, out, prefix="test_")
        if not self.n_classes:
            return metrics, None, None
        preds = out[:, :self.n_classes].argmax(1)
        y = self.data.y[idx]
        metrics["test_accuracy"] = float((preds == y).mean())
        return metrics, confusion(y, preds, self.n_classes), preds
