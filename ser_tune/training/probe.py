"""The linear probe: the untuned baseline a tuned model must beat.

scikit-learn's logistic regression (class-balanced, standardised inputs) on the frozen encoder's
mean-pooled features of one layer, or of the mean over layers. Its layer and regularisation ``C`` are
chosen by speaker cross-validation on the training speakers alone (the same inner folds the trials
use), by mean balanced class accuracy; then it is refit on all of them and scored once on the test
speakers. Features may be normalised first (``ser_tune.training.normalize``), as a trial's are.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = np.tile([0, 1], 20)
>>> pooled = rng.normal(size=(40, 2, 3)); pooled[:, 1] += 6 * y[:, None]       # layer 1 carries the label
>>> folds = [(np.arange(0, 15), np.arange(15, 30)), (np.arange(15, 30), np.arange(0, 15))]
>>> result = linear_probe(pooled, y, folds, train=np.arange(30), test=np.arange(30, 40))
>>> result.layer, result.test_bca
(1, 1.0)
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

C_GRID = (0.01, 0.1, 1.0, 10.0)
MEAN = "mean"   # the mean over layers, one more choice beside each layer


@dataclass
class ProbeResult:
    layer: int | str
    C: float
    cv_bca: float                      # mean validation BCA over the inner folds of the chosen setting
    test_bca: float | None
    test_predictions: np.ndarray | None = field(default=None, repr=False)
    seconds: float = 0.0
    grid: dict = field(default_factory=dict, repr=False)   # "layer|C" -> mean inner BCA
    model: object = field(default=None, repr=False)       # the refit pipeline (predicts layer_features)

    def predict(self, pooled: np.ndarray) -> np.ndarray:
        """Class indices of other clips' pooled features (normalised as the probe's were)."""
        with threadpool_limits(limits=1):
            return self.model.predict(layer_features(pooled, self.layer))

    def to_dict(self) -> dict:
        return {"layer": self.layer, "C": self.C, "cv_bca": self.cv_bca, "test_bca": self.test_bca,
                "seconds": self.seconds}


def layer_features(pooled: np.ndarray, layer: int | str) -> np.ndarray:
    return pooled.mean(1) if layer == MEAN else pooled[:, int(layer)]


def logistic_regression(c: float, seed: int = 0, *, class_weight: str | None = "balanced") -> LogisticRegression:
    """The probe's classifier (also a trial's ``head: logreg``'s): L2 logistic regression fitted to convergence."""
    return LogisticRegression(C=c, class_weight=class_weight, max_iter=1000, random_state=seed)


def fit_probe(x: np.ndarray, y: np.ndarray, c: float, seed: int = 0, *, class_weight: str | None = "balanced"):
    """The probe's model: standardised features, L2 logistic regression."""
    model = make_pipeline(StandardScaler(), logistic_regression(c, seed, class_weight=class_weight))
    with warnings.catch_warnings():   # a probe that stops a little short of the optimum is still a probe
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def inner_score(x: np.ndarray, y: np.ndarray, folds, c: float, seed: int) -> float:
    scores = [balanced_accuracy_score(y[val], fit_probe(x[train], y[train], c, seed).predict(x[val]))
              for train, val in folds]
    return float(np.mean(scores))


def linear_probe(pooled: np.ndarray, y: np.ndarray, folds, *, train: np.ndarray, test: np.ndarray,
                 layers=None, c_grid=C_GRID, seed: int = 0) -> ProbeResult:
    """Choose the layer and C on ``folds`` ([(train rows, validation rows)], rows of ``pooled``), refit
    on ``train`` and score ``test`` (BCA; None without test rows)."""
    start = time.perf_counter()
    layers = list(range(pooled.shape[1])) + [MEAN] if layers is None else list(layers)
    # One BLAS thread: the problems are small, and threads fighting over a busy machine's cores made
    # a probe 20x slower.
    with threadpool_limits(limits=1):
        grid = {(layer, c): inner_score(layer_features(pooled, layer), y, folds, c, seed)
                for layer in layers for c in c_grid}
        (layer, c), best = max(grid.items(), key=lambda kv: kv[1])   # ties: lower layer, smaller C first
        x = layer_features(pooled, layer)
        model = fit_probe(x[train], y[train], c, seed)
    preds = model.predict(x[test]) if len(test) else None
    test_bca = float(balanced_accuracy_score(y[test], preds)) if len(test) else None
    return ProbeResult(layer=layer, C=float(c), cv_bca=best, test_bca=test_bca, test_predictions=preds,
                       seconds=time.perf_counter() - start, grid={f"{k[0]}|{k[1]:g}": v for k, v in grid.items()},
                       model=model)


def normalised_probe(pooled: np.ndarray, y: np.ndarray, speakers, kind: str, folds, *, train: np.ndarray,
                     test: np.ndarray, seed: int = 0) -> dict:
    """:func:`linear_probe` of one outer fold (as :meth:`ProbeResult.to_dict`) on ``pooled`` normalised as
    ``kind`` says (``training.normalize``, statistics of the fold's ``train`` rows)."""
    from .normalize import FeatureNorm

    norm = FeatureNorm.fit(kind, pooled, speakers=speakers, rows=train)
    x = norm.apply(pooled, np.arange(len(pooled))) if norm is not None else pooled
    return linear_probe(x, y, folds, train=train, test=test, seed=seed).to_dict()


CHOSEN = "chosen"   # the probe entry whose normalisation, as its layer and C, the inner folds chose


def choose_normalization(by_kind: dict[str, list[dict]]) -> list[dict]:
    """Per outer fold, the probe (a :meth:`ProbeResult.to_dict` row) of the normalisation with the best
    inner-fold BCA, that normalisation named in ``normalize``: the probe of a study that searches
    ``normalize`` chooses it as it chooses its layer and C (ties: the first kind given, e.g. none).

    >>> choose_normalization({"none": [{"cv_bca": 0.8, "test_bca": 0.7}], "speaker": [{"cv_bca": 0.9, "test_bca": 0.6}]})
    [{'cv_bca': 0.9, 'test_bca': 0.6, 'normalize': 'speaker'}]
    """
    kinds = list(by_kind)
    folds = len(by_kind[kinds[0]]) if kinds else 0
    chosen = []
    for f in range(folds):
        kind = max(kinds, key=lambda k: (by_kind[k][f]["cv_bca"], -kinds.index(k)))
        chosen.append({**by_kind[kind][f], "normalize": kind})
    return chosen
