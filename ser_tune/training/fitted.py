"""Heads fitted once by scikit-learn on cached pooled statistics: ``logreg`` and ``lda``.

``logreg`` is the probe's kind of model (``probe.logistic_regression``). ``lda`` is linear
discriminant analysis with a shrunk within-class covariance, ``(1 - shrinkage) * S + shrinkage * mu * I``
(Friedman 1989; scikit-learn's ``solver="lsqr"``), fitted in closed form after standardising the
features and projecting them on the training clips' principal components: with every layer's statistics
the head reads thousands of features from a few hundred clips, the covariance is of rank below the
clips, and the projection makes the fit a fraction of a second instead of tens. The shrinkage then acts in
that subspace (its identity target scaled by the subspace's mean variance), so a given ``shrinkage`` is not
the full-width LDA's: the search chooses it on the same model it scores. With
``class_weighted`` the class priors are equal, as balanced class accuracy weighs the classes.

Both standardise with the training clips' statistics, every feature's scale floored at ``SCALE_FLOOR`` times
the median feature's: a feature that barely moves (pooled over a clip, the position embeddings in an
encoder's first hidden state are all but constant) would otherwise be blown up from float32 rounding noise,
and the head, in float32, cannot divide by it (a study's trials on every layer, unnormalised, scored at
chance before this floor).

Both are linear in the head's input, so :func:`linear_map` folds the pipeline into one standardisation
and one linear map: the head (``head.load_fitted``) computes the model's class scores, and evaluation,
export and predict are the code every head uses.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1, 2], 20)
>>> x = rng.normal(size=(60, 40)); x[:, 0] += 4 * y
>>> model = fit_lda(x, y, shrinkage=0.5)
>>> mean, scale, weight, bias, classes = linear_map(model)
>>> scores = (x - mean) / scale @ weight.T + bias
>>> bool((scores.argmax(1) == model.predict(x)).all()), weight.shape
(True, (3, 40))
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .probe import logistic_regression

SCALE_FLOOR = 1e-3   # a feature's standard deviation is at least this times the median feature's


def floored_scaler(x: np.ndarray) -> StandardScaler:
    """StandardScaler fitted on ``x``, no scale below ``SCALE_FLOOR`` times the median scale."""
    scaler = StandardScaler().fit(x)
    scaler.scale_ = np.maximum(scaler.scale_, SCALE_FLOOR * float(np.median(scaler.scale_)))
    return scaler


def standardised_fit(x: np.ndarray, y: np.ndarray, *steps) -> Pipeline:
    """``steps`` fitted on ``x`` standardised by :func:`floored_scaler`; the pipeline of the scaler and them."""
    scaler = floored_scaler(x)
    rest = make_pipeline(*steps)
    with warnings.catch_warnings():   # a regression that stops a little short of the optimum, as the probe's
        warnings.simplefilter("ignore", ConvergenceWarning)
        rest.fit(scaler.transform(x), y)
    return Pipeline([("standardscaler", scaler), *rest.steps])


def fit_lda(x: np.ndarray, y: np.ndarray, shrinkage: float, *, class_weighted: bool = True) -> Pipeline:
    """Standardised features -> principal components of the training clips -> shrinkage LDA."""
    classes = np.unique(y)
    priors = np.full(len(classes), 1.0 / len(classes)) if class_weighted else None
    return standardised_fit(x, y, PCA(svd_solver="full"),
                            LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage, priors=priors))


def fit_head(head: str, x: np.ndarray, y: np.ndarray, *, C: float, shrinkage: float, seed: int,
             class_weighted: bool) -> Pipeline:
    """The fitted head ``head`` ("logreg" or "lda") on features ``x`` (clips, features), labels ``y``."""
    if head == "lda":
        return fit_lda(x, y, shrinkage, class_weighted=class_weighted)
    return standardised_fit(x, y, logistic_regression(C, seed, class_weight="balanced" if class_weighted else None))


def linear_map(model: Pipeline) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``model`` (StandardScaler, optional PCA, a linear classifier with coef_ and intercept_) as
    (mean, scale, weight, bias, classes): its class scores are ``(x - mean) / scale @ weight.T + bias``;
    two classes give two rows (0 and sklearn's one score), as a softmax over them is its sigmoid."""
    scaler, classifier = model[0], model[-1]
    weight = np.asarray(classifier.coef_, np.float64)
    bias = np.asarray(classifier.intercept_, np.float64)
    for step in model[1:-1]:   # a projection z = (x - m) @ P.T between them: fold it into the map
        components = np.asarray(step.components_, np.float64)
        bias = bias - weight @ (components @ np.asarray(step.mean_, np.float64))
        weight = weight @ components
    if weight.shape[0] == 1:
        weight = np.vstack([np.zeros_like(weight), weight])
        bias = np.concatenate([[0.0], bias])
    return (np.asarray(scaler.mean_, np.float64), np.asarray(scaler.scale_, np.float64), weight, bias,
            np.asarray(classifier.classes_))
