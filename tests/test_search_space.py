"""Search spaces and grids: parsing, every error naming its parameter, Tune conversion, grid order."""
import doctest

import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform
from ray.tune.search.variant_generator import generate_variants

from ser_tune.search import space as space_module
from ser_tune.search.space import (Param, SpaceError, default_grid, grid_points, grid_size, paper_grid,
                                   paper_space, parse_grid, parse_space, space_to_raw, to_grid_space,
                                   to_tune_space)


def test_parse_every_kind():
    space = parse_space({
        "lr": {"loguniform": [1e-5, 1e-3]},
        "dropout": {"uniform": [0.0, 0.5]},
        "num_epochs": {"int": [1, 4]},
        "max_length": {"choice": [1.0, 2.0]},
    })
    assert space["lr"] == Param("lr", "loguniform", 1e-5, 1e-3)
    assert space["dropout"] == Param("dropout", "uniform", 0.0, 0.5)
    assert space["num_epochs"] == Param("num_epochs", "int", 1, 4)
    assert space["max_length"] == Param("max_length", "choice", values=(1.0, 2.0))
    assert parse_space(space_to_raw(space)) == space


@pytest.mark.parametrize("raw, expected", [
    ({"lr": {"loguniform": [1e-3, 1e-6]}}, r"space\.lr: low must be < high \(got 0\.001 > 1e-06\)"),
    ({"dropout": {"uniform": [0.3, 0.3]}}, r"space\.dropout: low must be < high"),
    ({"num_epochs": {"int": [5, 2]}}, r"space\.num_epochs: low must be <= high"),
    ({"lr": {"loguniform": ["1e-6", 1e-3]}}, r"space\.lr: low must be a number .*write 1\.0e-6"),
    ({"lr": {"loguniform": [0.0, 1e-3]}}, r"space\.lr: loguniform low must be > 0"),
    ({"lr": {"normal": [0, 1]}}, r"space\.lr: unknown kind 'normal'"),
    ({"lr": {"uniform": [1e-4]}}, r"space\.lr: uniform needs \[low, high\]"),
    ({"lr": [1e-4, 1e-3]}, r"space\.lr: expected a one-key mapping"),
    ({"lr": {"uniform": 1e-4}}, r"space\.lr: uniform needs a list"),
    ({"num_epochs": {"int": [1.5, 4]}}, r"space\.num_epochs: int bounds must be integers"),
    ({"max_length": {"choice": []}}, r"space\.max_length: choice needs at least one value"),
    ({"max_length": {"choice": [2, 2]}}, r"space\.max_length: choice values repeat"),
    ({"learning_rate": {"uniform": [0, 1]}}, r"space\.learning_rate: 'learning_rate' is not a trial setting"),
    ({"num_epochs": {"int": [0, 4]}}, r"space\.num_epochs low: 0 is not a valid value"),
    ({"head": {"choice": ["linear", "transformer"]}}, r"space\.head: 'transformer' is not a valid value"),
    ({"lr": {"uniform": [True, 2]}}, r"space\.lr: low must be a number"),
])
def test_space_errors_name_the_parameter(raw, expected):
    with pytest.raises(SpaceError, match=expected):
        parse_space(raw)


def test_empty_or_non_mapping_space_is_refused():
    with pytest.raises(SpaceError, match="space: the space is empty"):
        parse_space({})
    with pytest.raises(SpaceError, match="space: expected a mapping"):
        parse_space([("lr", {"uniform": [0, 1]})])


def test_paper_space_and_grid():
    space = paper_space()
    assert space["lr"] == Param("lr", "loguniform", 1e-6, 1e-3)
    assert (space["num_epochs"].low, space["num_epochs"].high) == (1, 10)
    assert (space["unfreeze_epoch"].low, space["unfreeze_epoch"].high) == (0, 5)
    assert space["max_length"].values == (2, 3, 4, 5, 7, 10)
    grid = paper_grid()
    assert set(grid) == set(space)
    assert grid_size(grid) == 144
    for name, values in grid.items():   # the grid lies inside the paper's space
        p = space[name]
        assert all(v in p.values for v in values) if p.kind == "choice" else all(p.low <= v <= p.high for v in values)


def test_to_tune_space_domains():
    tuned = to_tune_space(paper_space())
    assert isinstance(tuned["lr"], Float) and isinstance(tuned["lr"].get_sampler(), LogUniform)
    assert (tuned["lr"].lower, tuned["lr"].upper) == (1e-6, 1e-3)
    assert isinstance(tuned["num_epochs"], Integer)
    assert (tuned["num_epochs"].lower, tuned["num_epochs"].upper) == (1, 11)   # randint excludes its upper end
    assert isinstance(tuned["max_length"], Categorical)
    samples = [tuned["num_epochs"].sample(random_state=i) for i in range(200)]
    assert min(samples) == 1 and max(samples) == 10


def test_grid_points_follow_ray_order():
    grid = {"num_epochs": [1, 5], "lr": [1e-4, 1e-3, 1e-2], "max_length": [2.0, 3.0]}
    ray_order = [spec for _, spec in generate_variants(to_grid_space(grid))]
    assert grid_points(grid) == ray_order
    assert len(ray_order) == grid_size(grid) == 12
    # documented order: names alphabetical, the first (lr) fastest
    assert [p["lr"] for p in grid_points(grid)[:3]] == [1e-4, 1e-3, 1e-2]
    assert grid_points(grid)[3]["max_length"] == 3.0


def test_grid_errors_name_the_field():
    with pytest.raises(SpaceError, match=r"grid\.epochs: 'epochs' is not a trial setting"):
        to_grid_space({"epochs": [1, 2]})
    with pytest.raises(SpaceError, match=r"grid\.lr: expected a non-empty list"):
        parse_grid({"lr": []})
    with pytest.raises(SpaceError, match=r"grid\.num_epochs: 0 is not a valid value"):
        parse_grid({"num_epochs": [0, 1]})


def test_default_grid():
    assert default_grid(paper_space()) == paper_grid()
    grid = default_grid(parse_space({"lr": {"loguniform": [1e-4, 1e-1]}, "num_epochs": {"int": [2, 3]},
                                     "dropout": {"uniform": [0.0, 0.3]}, "max_length": {"choice": [1.0, 2.0]}}))
    assert grid == {"lr": [1e-4, 1e-3, 1e-2, 1e-1], "num_epochs": [2, 3], "dropout": [0.0, 0.1, 0.2, 0.3],
                    "max_length": [1.0, 2.0]}


def test_space_module_doctests():
    assert doctest.testmod(space_module).failed == 0
