"""A report that says what it shows: the quickstart's smoke test in words, no dimensional-label line in a
categorical study, no spread or promised p for one fold, one trial numbering, readable plots."""
from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure

from ser_tune.results import compare, load_study
from ser_tune.results.plots import draw_best_so_far, hyperparameter_figure, panel_grid
from ser_tune.results.report import render_report
from test_results_study import make_study


def _edit_meta(folder, **changes):
    meta = json.loads((folder / "study.json").read_text())
    for key, value in changes.items():
        node = meta
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    (folder / "study.json").write_text(json.dumps(meta))
    return folder


def _text(folder) -> str:
    studies = [load_study(folder)]
    return render_report(studies, compare(studies), [], folder)


DIMS = {"train": {"labelled": 40, "files": 40}, "val": {"labelled": 10, "files": 10},
        "test": {"labelled": 10, "files": 10}}


def test_the_synthetic_quickstart_says_it_is_a_smoke_test_and_where_a_real_answer_is(tmp_path):
    folder = _edit_meta(make_study(tmp_path, synthetic=True), **{"encoder.spec": "tiny-whisper"})
    words = " ".join(_text(folder).split())
    assert "This is a smoke test" in words and "tiny randomly initialised encoder" in words
    assert "need not beat the linear probe" in words
    assert "`python -m ser_tune.launch experiments/emodb.yaml`" in words
    assert "smoke test" not in _text(make_study(tmp_path, "real"))


def test_dimensional_labels_only_where_the_study_uses_them(tmp_path):
    categorical = _edit_meta(make_study(tmp_path, "cat"), **{"corpus.dimensions_labelled": DIMS})
    assert "Dimensional labels" not in _text(categorical)
    scored = _edit_meta(make_study(tmp_path, "dims"), **{"corpus.dimensions_labelled": DIMS,
                                                         "experiment.trial": {"task": "both"}})
    assert "Dimensional labels (arousal/valence/dominance): train 40 of 40 clips" in _text(scored)


def test_one_test_fold_has_no_spread_and_promises_no_p(tmp_path):
    folder = _edit_meta(make_study(tmp_path), **{"baselines.probe": {"none": {"folds": [{"test_bca": 0.7}]}}})
    section = _text(folder).split("## Speakers the search never heard")[1].split("\n## ")[0]
    assert "±" not in section and "Wilcoxon p (few folds" not in section
    assert "| Model | test_bca (12) | Gain over the probe |" in section
    assert "| tpe | 0.900 | +0.200 |" in section
    assert "one fold has no spread and allows no test" in " ".join(section.split())


def test_the_best_trial_is_named_by_its_place_in_start_order(tmp_path):
    best = _text(make_study(tmp_path)).split("## Best configuration")[1]
    # trials.csv trial_index 1 (0-based) is trial 2, as in best_vs_trials.png and the launcher's lines
    assert "trial `00001` (trial 2 of its run in start order" in best


def test_best_vs_time_starts_at_the_runs_start_with_threshold_labels_inside(tmp_path):
    studies = [load_study(make_study(tmp_path))]
    ax = Figure().add_subplot()
    assert draw_best_so_far(ax, studies, [0.8, 0.9], "seconds", several=False) == 2
    assert ax.get_xlim()[0] == 0
    labels = [t for t in ax.texts if t.get_text().startswith("threshold")]
    assert [t.get_text() for t in labels] == ["threshold 0.8", "threshold 0.9"]
    assert all(0 <= t.xy[0] <= 1 and t.get_horizontalalignment() == "left" for t in labels)


@pytest.mark.parametrize("panels, grid", [(1, (1, 1)), (3, (1, 3)), (4, (2, 2)), (5, (2, 3)), (7, (4, 2)),
                                          (9, (3, 3))])
def test_panels_leave_at_most_the_legends_cell_free(panels, grid):
    rows, cols = panel_grid(panels)
    assert (rows, cols) == grid and rows * cols - panels <= 1


def test_hyperparameter_panels_ring_the_best_trial_and_none_is_empty(tmp_path):
    study = load_study(make_study(tmp_path))
    columns = [c for c in study.trials.columns if c.startswith("cfg_")]
    fig = hyperparameter_figure([study], columns, "t")
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == len(columns) == 2 and all(ax.collections for ax in panels)
    for ax in panels:
        ring = [c for c in ax.collections if c.get_label().startswith("best trial")]
        assert len(ring) == 1 and ring[0].get_label() == "best trial (tpe, trial 2)"
        assert tuple(ring[0].get_offsets()[0])[1] == pytest.approx(0.93)
