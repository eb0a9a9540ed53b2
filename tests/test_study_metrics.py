"""A study's progress as Ray metrics (Prometheus scraping a running study: tests/test_live_view.py)."""
from __future__ import annotations

import pickle

from ser_tune.study.live_metrics import StudyMetrics


def test_the_callback_pickles_without_its_metric_objects():
    metrics = StudyMetrics("s", "tpe", "tpe", "val_bca", "max", 3)
    metrics._made = object()          # stands for Ray's metric objects, which do not pickle
    again = pickle.loads(pickle.dumps(metrics))
    assert again._made is None and again.tags == {"study": "s", "strategy": "tpe", "unit": "tpe",
                                                  "metric": "val_bca"}
