"""BCA and the confusion matrix, written out in numpy for the trials, equal scikit-learn's."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix

from ser_tune.training.metrics import bca, confusion


@pytest.mark.parametrize("seed", range(20))
def test_bca_and_confusion_equal_sklearns(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    n = int(rng.integers(1, 60))
    y_true = rng.integers(0, k, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))   # absent classes happen too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # sklearn warns when a predicted class is absent from y_true
        expected = balanced_accuracy_score(y_true, y_pred)
    assert bca(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
    assert confusion(y_true, y_pred, k) == confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist()


def test_a_predicted_class_absent_from_the_truth_adds_no_recall():
    assert bca([0, 0, 1, 1], [0, 2, 1, 1]) == pytest.approx(0.75)
    assert confusion([0, 1], [1, 5], 2) == [[0, 1], [0, 0]]   # a label outside the classes is left out


def test_bca_of_mismatched_lengths_is_an_error():
    with pytest.raises(ValueError, match="3 true labels against 2"):
        bca([0, 1, 1], [0, 1])


def test_a_trial_worker_does_not_import_sklearn():
    code = "import sys, ser_tune.training.trainable; print('sklearn' in sys.modules, 'scipy.signal' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"]
