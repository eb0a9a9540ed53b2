"""Speaker-independent, random and fold splits; save/load by path."""
from __future__ import annotations

import itertools

import pandas as pd
import pytest

from ser_tune.data import (DataError, Split, leave_speakers_out_folds, make_split, random_split,
                           speaker_split)


@pytest.fixture(scope="module")
def table(synthetic_corpus):
    return synthetic_corpus.table


def unbalanced_table():
    """10 speakers (5 f, 5 m) whose label mixes differ, as in real corpora."""
    rows = []
    for s in range(10):
        for label, n in (("a", 2 + s), ("b", 12 - s), ("c", 3 + (s % 3) * 4)):
            rows += [{"path": f"/d/{s}_{label}_{i}.wav", "speaker": f"S{s}", "label": label,
                      "gender": "f" if s < 5 else "m"} for i in range(n)]
    return pd.DataFrame(rows)


def assert_disjoint(split, table):
    parts = {p: set(split.speakers(table, p)) for p in ("train", "val", "test")}
    for a, b in itertools.combinations(parts, 2):
        assert not parts[a] & parts[b], (a, b)
    assert set().union(*parts.values()) == set(table["speaker"])
    assert set(split.assignment) <= {"train", "val", "test"} and split.assignment.notna().all()
    return parts


def test_speaker_split_disjoint_and_sized(table):
    split = speaker_split(table, val_speakers=2, test_speakers=2, seed=0)
    parts = assert_disjoint(split, table)
    assert (len(parts["val"]), len(parts["test"]), len(parts["train"])) == (2, 2, 4)
    assert split.kind == "speaker" and split.speaker_dependent is False
    assert len(split.part(table, "train")) + len(split.part(table, "val")) + len(split.part(table, "test")) == len(table)
    fractions = speaker_split(table, seed=0)            # 0.2 of 8 speakers -> 2 each
    assert [len(fractions.speakers(table, p)) for p in ("val", "test")] == [2, 2]


def test_speaker_split_balances_gender(table):
    for seed in range(5):
        split = speaker_split(table, val_speakers=2, test_speakers=2, seed=seed)
        for part in ("val", "test"):
            genders = split.part(table, part).drop_duplicates("speaker")["gender"]
            assert sorted(genders) == ["f", "m"], (seed, part)


def test_speaker_split_prefers_close_label_distributions():
    t = unbalanced_table()
    overall = t["label"].value_counts(normalize=True)

    def distance(split):
        return sum(0.5 * (split.part(t, p)["label"].value_counts(normalize=True)
                          .reindex(overall.index, fill_value=0) - overall).abs().sum() for p in ("val", "test"))

    chosen = [distance(speaker_split(t, val_speakers=2, test_speakers=2, seed=s)) for s in range(5)]
    # Plain random speaker draws for comparison.
    import numpy as np
    rng = np.random.default_rng(0)
    speakers = sorted(t["speaker"].unique())
    rand = []
    for _ in range(50):
        order = rng.permutation(speakers)
        part = {s: "test" for s in order[:2]} | {s: "val" for s in order[2:4]}
        assignment = t["speaker"].map(lambda s: part.get(s, "train"))
        rand.append(distance(Split("speaker", assignment, 0, False)))
    assert max(chosen) < np.median(rand)


def test_speaker_split_seeds(table):
    a = speaker_split(table, val_speakers=2, test_speakers=2, seed=3)
    b = speaker_split(table, val_speakers=2, test_speakers=2, seed=3)
    assert a.assignment.equals(b.assignment)
    distinct = {tuple(speaker_split(table, val_speakers=2, test_speakers=2, seed=s).assignment) for s in range(6)}
    assert len(distinct) >= 3


def test_speaker_split_bad_sizes(table):
    with pytest.raises(DataError, match="cannot give 4 val \\+ 4 test"):
        speaker_split(table, val_speakers=4, test_speakers=4)
    with pytest.raises(DataError, match="val_speakers"):
        speaker_split(table, val_speakers=0)
    with pytest.raises(DataError, match="missing column 'speaker'"):
        speaker_split(table.drop(columns="speaker"))


def test_random_split_is_speaker_dependent_and_stratified(table):
    split = random_split(table, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert split.kind == "random" and split.speaker_dependent is True
    test = split.part(table, "test")
    assert test["label"].value_counts().nunique() == 1         # 32 per label -> 6 test clips each
    assert len(test) == 7 * 6 and len(split.part(table, "val")) == 7 * 3
    assert set(split.speakers(table, "test")) & set(split.speakers(table, "train"))
    assert split.assignment.equals(random_split(table, seed=0).assignment)
    assert not split.assignment.equals(random_split(table, seed=1).assignment)
    paper = random_split(table, val_fraction=0.0, test_fraction=0.2, seed=0)
    assert paper.counts()["val"] == 0


def test_folds_cover_each_speaker_once(table):
    folds = leave_speakers_out_folds(table, k=4, seed=0, val_speakers=1)
    assert len(folds) == 4
    tested = [s for f in folds for s in f.speakers(table, "test")]
    assert sorted(tested) == sorted(table["speaker"].unique())
    for i, f in enumerate(folds):
        assert_disjoint(f, table)
        assert f.kind == "fold" and f.params["fold"] == i and not f.speaker_dependent
        assert len(f.speakers(table, "val")) == 1
        genders = f.part(table, "test").drop_duplicates("speaker")["gender"]
        assert sorted(genders) == ["f", "m"]
    with pytest.raises(DataError, match="k: must be an integer in 2..8"):
        leave_speakers_out_folds(table, k=9)


def test_make_split_dispatch(table):
    assert make_split(table, {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 1}).assignment.equals(
        speaker_split(table, val_speakers=2, test_speakers=2, seed=1).assignment)
    fold = make_split(table, {"kind": "fold", "k": 4, "fold": 2, "seed": 0})
    assert fold.assignment.equals(leave_speakers_out_folds(table, k=4, seed=0)[2].assignment)
    assert make_split(table, {"kind": "random", "seed": 0}).speaker_dependent
    with pytest.raises(DataError, match="split.kind"):
        make_split(table, {"kind": "loso"})
    with pytest.raises(DataError, match="split.test_fraction: not a setting of a 'speaker' split"):
        make_split(table, {"kind": "speaker", "test_fraction": 0.2})
    with pytest.raises(DataError, match="split.fold"):
        make_split(table, {"kind": "fold", "k": 4, "fold": 4})
    # A split's spec rebuilds it.
    split = speaker_split(table, seed=4)
    assert make_split(table, split.spec()).assignment.equals(split.assignment)


def test_save_load_round_trip(table, tmp_path):
    split = speaker_split(table, val_speakers=2, test_speakers=2, seed=2)
    split.save(tmp_path / "split.json", table)
    loaded = Split.load(tmp_path / "split.json", table)
    assert loaded.assignment.equals(split.assignment)
    assert (loaded.kind, loaded.seed, loaded.speaker_dependent, loaded.params) == (
        split.kind, split.seed, split.speaker_dependent, split.params)
    # Rows in another order: assignment follows the paths, not the row numbers.
    shuffled = table.sample(frac=1.0, random_state=0).reset_index(drop=True)
    again = Split.load(tmp_path / "split.json", shuffled)
    assert again.speakers(shuffled, "test") == split.speakers(table, "test")
    # The data moved to another folder: file names still identify the clips.
    moved = table.assign(path=table["path"].str.replace(r"^.*/", "/elsewhere/", regex=True))
    assert Split.load(tmp_path / "split.json", moved).assignment.equals(split.assignment)


def test_load_rejects_other_tables(table, tmp_path):
    split = speaker_split(table, seed=0)
    split.save(tmp_path / "split.json", table)
    with pytest.raises(DataError, match="split.json: .*not in the saved split"):
        Split.load(tmp_path / "split.json", table.assign(path=table["path"] + ".other"))
    with pytest.raises(DataError, match="split file not found"):
        Split.load(tmp_path / "none.json", table)
    with pytest.raises(DataError, match="index does not match"):
        split.part(table.iloc[:10], "train")
    with pytest.raises(DataError, match="unknown part 'dev'"):
        split.part(table, "dev")
