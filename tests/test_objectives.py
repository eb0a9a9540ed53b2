"""Pareto fronts, hypervolume and constraints over trial tables."""
from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from ser_tune import objectives as pareto_module
from ser_tune.objectives import (feasible, hypervolume, hypervolume_over_time, pareto_front, penalised,
                                     rank_with_constraints, reference_point)

THREE = {"val_bca": "max", "latency_ms_per_s": "min", "model_bytes": "min"}
TWO = {"val_bca": "max", "latency_ms_per_s": "min"}


def _table():
    rows = [  # name, val_bca, latency_ms_per_s, model_bytes
        ("A", 0.80, 50.0, 10.0),
        ("B", 0.80, 50.0, 10.0),         # a duplicate of A: both on the front
        ("C", 0.70, 20.0, 10.0),
        ("D", 0.70, 30.0, 10.0),         # equal to C in two objectives, slower: dominated
        ("E", 0.60, 20.0, 12.0),         # equal to C in latency, worse otherwise: dominated
        ("F", 0.90, 80.0, 30.0),
        ("G", 0.50, 10.0, 40.0),
        ("H", math.nan, 5.0, 1.0),       # would dominate most, but has no BCA: left out
        ("I", 0.65, 25.0, 5.0),          # on the 3-D front only (smallest), C dominates it in 2-D
        ("J", 0.65, 25.0, 6.0),          # equal to I in two objectives, larger: dominated
    ]
    return pd.DataFrame(rows, columns=["name", *THREE])


def test_module_doctest_runs():
    assert doctest.testmod(pareto_module).failed == 0


def test_front_is_the_non_dominated_set():
    table = _table()
    assert pareto_front(table, THREE)["name"].tolist() == ["A", "B", "C", "F", "G", "I"]
    assert pareto_front(table, TWO)["name"].tolist() == ["A", "B", "C", "F", "G"]
    front = pareto_front(table.sample(frac=1.0, random_state=0), THREE)   # order-free, index kept
    assert sorted(front["name"]) == ["A", "B", "C", "F", "G", "I"]
    assert front.index.isin(table.index[table["name"].isin(["A", "B", "C", "F", "G", "I"])]).all()


def test_front_matches_a_brute_force_definition():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.integers(0, 5, size=(40, 3)).astype(float), columns=list(THREE))
    values = table.to_numpy() * np.array([-1, 1, 1])   # all to minimise
    expected = [i for i, p in enumerate(values)
                if not any((q <= p).all() and (q < p).any() for q in values)]
    assert pareto_front(table, THREE).index.tolist() == expected


def test_bad_objectives_are_one_line():
    with pytest.raises(ValueError, match="objective 'speed': no such column"):
        pareto_front(_table(), {"val_bca": "max", "speed": "min"})
    with pytest.raises(ValueError, match="objective 'val_bca': mode must be 'max' or 'min'"):
        pareto_front(_table(), {"val_bca": "maximise"})
    with pytest.raises(ValueError, match="at least one column"):
        pareto_front(_table(), {})


def test_hypervolume_2d_against_a_hand_computation():
    points = pd.DataFrame({"val_bca": [0.9, 0.8, 0.6, 0.7, 0.4, 0.5, math.nan],
                           "latency_ms_per_s": [40.0, 20.0, 10.0, 30.0, 5.0, 5.0, 1.0]})
    reference = {"val_bca": 0.5, "latency_ms_per_s": 50.0}
    # Bands of BCA: 0.5-0.6 below 50 ms from 10 ms, 0.6-0.8 from 20 ms, 0.8-0.9 from 40 ms.
    # (0.7, 30) is dominated; (0.4, 5) is worse than the reference in BCA and (0.5, 5) equal to
    # it: neither adds anything; the NaN row is left out.
    expected = 0.1 * 40 + 0.2 * 30 + 0.1 * 10
    assert hypervolume(points, TWO, reference) == pytest.approx(expected)


def test_hypervolume_3d_against_inclusion_exclusion():
    # All to minimise, reference (4, 4, 4). Boxes: p1 (1,2,3) 3*2*1=6, p2 (2,1,2) 2*3*2=12,
    # p3 (3,3,1) 1*1*3=3; pairwise intersections (2,2,3) 4, (3,3,3) 1, (3,3,2) 2; triple (3,3,3) 1.
    objectives = {"a": "min", "b": "min", "c": "min"}
    points = pd.DataFrame([(1, 2, 3), (2, 1, 2), (3, 3, 1)], columns=list(objectives), dtype=float)
    reference = {"a": 4.0, "b": 4.0, "c": 4.0}
    expected = 6 + 12 + 3 - 4 - 1 - 2 + 1
    assert hypervolume(points, objectives, reference) == pytest.approx(expected)
    for order in itertools.permutations(objectives):   # any objective order, same volume
        assert hypervolume(points, {k: "min" for k in order}, reference) == pytest.approx(expected)
    # a maximised objective: negate its column and its reference
    flipped = points.assign(c=-points["c"])
    assert hypervolume(flipped, {"a": "min", "b": "min", "c": "max"},
                       {"a": 4.0, "b": 4.0, "c": -4.0}) == pytest.approx(expected)


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_hypervolume_counts_dominated_unit_cells_on_integer_points(dims):
    """On integer points the dominated region is a union of unit cells: count them directly."""
    rng = np.random.default_rng(dims)
    objectives = {f"o{i}": "min" for i in range(dims)}
    points = pd.DataFrame(rng.integers(0, 6, size=(12, dims)).astype(float), columns=list(objectives))
    reference = {name: 6.0 for name in objectives}
    values = points.to_numpy()
    cells = sum(1 for cell in itertools.product(range(6), repeat=dims)
                if (values <= np.array(cell)).all(axis=1).any())
    assert hypervolume(points, objectives, reference) == pytest.approx(cells)


def test_reference_point_is_the_worst_value_of_each_objective():
    assert reference_point(_table(), THREE) == {"val_bca": 0.5, "latency_ms_per_s": 80.0, "model_bytes": 40.0}
    with pytest.raises(ValueError, match="reference point: no value for objective"):
        hypervolume(_table(), THREE, {"val_bca": 0.5})


def test_hypervolume_over_time_steps_as_trials_end():
    reports = pd.DataFrame({"time": [30.0, 10.0, 20.0, 40.0],
                            "val_bca": [0.8, 0.6, 0.55, 0.9],
                            "latency_ms_per_s": [20.0, 10.0, 5.0, 40.0]})
    reference = {"val_bca": 0.5, "latency_ms_per_s": 50.0}
    curve = hypervolume_over_time(reports, TWO, reference)
    assert curve["time"].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert curve["trials"].tolist() == [1, 2, 3, 4]
    expected = [0.1 * 40,                                # (0.6, 10)
                0.1 * 40 + 0.05 * 5,                     # + (0.55, 5) below it
                0.05 * 45 + 0.05 * 40 + 0.2 * 30,        # + (0.8, 20)
                0.05 * 45 + 0.05 * 40 + 0.2 * 30 + 0.1 * 10]   # + (0.9, 40)
    assert curve["hypervolume"].to_numpy() == pytest.approx(expected)
    on_grid = hypervolume_over_time(reports, TWO, reference, times=[0.0, 25.0, 100.0])
    assert on_grid["trials"].tolist() == [0, 2, 4]
    assert on_grid["hypervolume"].to_numpy() == pytest.approx([0.0, expected[1], expected[3]])
    with pytest.raises(ValueError, match="no 'ended' column"):
        hypervolume_over_time(reports, TWO, reference, time_column="ended")


def test_constraints_keep_feasible_rows_and_nan_is_infeasible():
    table = _table().assign(model_bytes=[1e7, 3e7, 1e7, 1e7, 1e7, 1e7, 1e7, 1e7, math.nan, 1e7])
    ok = feasible(table, ["latency_ms_per_s <= 50", "model_bytes < 2e7"])
    assert table.loc[ok, "name"].tolist() == ["A", "C", "D", "E", "G", "H", "J"]
    assert feasible(table, []).all() and ok.index.equals(table.index)
    assert feasible(table, "val_bca>=0.8")[lambda s: s].index.tolist() == [0, 1, 5]


def test_ranking_puts_infeasible_trials_last():
    table = _table()
    ranked = rank_with_constraints(table, "val_bca", "max", ["latency_ms_per_s < 40"])
    # feasible by BCA (H: NaN last among them), then the infeasible A, B, F by BCA
    assert ranked["name"].tolist() == ["C", "D", "I", "J", "E", "G", "H", "F", "A", "B"]
    assert ranked["rank"].tolist() == list(range(1, 11))
    assert ranked["feasible"].tolist() == [True] * 7 + [False] * 3
    by_latency = rank_with_constraints(table, "latency_ms_per_s", "min", ["val_bca >= 0.7"])
    assert by_latency["name"].tolist()[:5] == ["C", "D", "A", "B", "F"]


@pytest.mark.parametrize("constraint, fragment", [
    ("latency_ms_per_s =< 50", "expected '<column> <op> <number>'"),
    ("latency_ms_per_s <= fast", "expected '<column> <op> <number>'"),
    ("<= 50", "expected '<column> <op> <number>'"),
    ("", "expected '<column> <op> <number>'"),
    ("latency <= 50", "unknown column 'latency'"),
])
def test_malformed_constraints_are_one_line_naming_them(constraint, fragment):
    with pytest.raises(ValueError) as err:
        feasible(_table(), ["model_bytes < 2e7", constraint])
    message = str(err.value)
    assert fragment in message and repr(constraint) in message and "\n" not in message


def test_penalised_values_are_worse_than_any_feasible_one():
    assert penalised(0.7, True, "max", worst=0.0) == 0.7
    assert penalised(0.7, False, "max", worst=0.0) < 0.0
    assert penalised(0.3, False, "min", worst=5.0) > 5.0
    values = penalised(np.array([0.7, 0.9, 0.1]), np.array([True, False, True]), "max", worst=0.0)
    assert values.tolist() == [0.7, -0.1, 0.1]
    with pytest.raises(ValueError, match="mode must be"):
        penalised(0.7, True, "best", worst=0.0)


def test_violations_say_how_far_each_constraint_is_missed():
    from ser_tune.objectives import TrialConstraints, measured, violation

    assert violation(40.0, "<=", 50.0) == 0.0 and violation(70.0, "<=", 50.0) == 20.0
    assert violation(50.0, "<", 50.0) > 0.0          # a strict bound broken by equality still counts
    assert violation(None, "<=", 50.0) == math.inf and violation(math.nan, ">=", 0.0) == math.inf
    rules = TrialConstraints(("latency_ms_per_s <= 50", "model_bytes < 2e7"), tuple(THREE), "val_bca", "max",
                             worst=0.0)
    assert rules.violations({"latency_ms_per_s": 60.0, "model_bytes": 1e7}) == [10.0, 0.0]
    assert rules.meets({"latency_ms_per_s": 50.0, "model_bytes": 1e7})
    assert not rules.meets({"latency_ms_per_s": 50.0})   # an unmeasured size is not known to fit
    # what a single-objective searcher is told: the true value when feasible, a penalty below 0 otherwise
    assert rules.told({"val_bca": 0.7, "latency_ms_per_s": 10.0, "model_bytes": 1.0})["val_bca"] == 0.7
    assert rules.told({"val_bca": 0.9, "latency_ms_per_s": 90.0, "model_bytes": 1.0})["val_bca"] < 0.0
    assert rules.told({"latency_ms_per_s": 90.0}) == {"latency_ms_per_s": 90.0}   # nothing to penalise
    with pytest.raises(ValueError, match="unknown column 'speed'"):
        TrialConstraints(("speed <= 3",), tuple(THREE), "val_bca", "max", worst=0.0)
    assert measured(_table(), ["latency_ms_per_s <= 50"]) and not measured(_table(), ["speed <= 3"])
    # the feasible rows of a table are the rows a TrialConstraints meets
    table = _table()
    assert feasible(table, list(rules.constraints)).tolist() == [rules.meets(r) for r in table.to_dict("records")]
