"""Leak checks on splits (check_split), speaker folds and outer cross-validation folds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ser_tune.data import (DataError, check_split, leave_speakers_out_folds, load_corpus, make_split,
                           outer_fold_assignments, speaker_folds, speaker_split)
from fixtures_corpora import write_wav
from test_data_splits import unbalanced_table


@pytest.fixture(scope="module")
def table(synthetic_corpus):
    return synthetic_corpus.table


def tiny_table(rows):
    return pd.DataFrame([{"path": f"/d/{i}.wav", "speaker": s, "label": l} for i, (s, l) in enumerate(rows)])


# --- check_split -------------------------------------------------------------------------------
def test_check_split_passes_a_clean_split(table):
    split = speaker_split(table, val_speakers=2, test_speakers=2, seed=0)
    check_split(table, split.assignment)


def test_same_file_or_same_audio_in_two_parts(tmp_path):
    t = tiny_table([("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")])
    t.loc[3, "path"] = "/d/sub/../0.wav"                       # another spelling of row 0's file
    parts = pd.Series(["train", "train", "test", "test"])
    with pytest.raises(DataError) as info:
        check_split(t, parts, speaker_independent=False)
    assert str(info.value) == "split: the same file is in two parts: /d/0.wav (train) and /d/sub/../0.wav (test)"
    t.loc[3, "path"] = "/d/3.wav"
    t["content_hash"] = ["h0", "h1", "h2", "h1"]               # rows 1 and 3: identical bytes
    with pytest.raises(DataError, match=r"^fold 2: identical audio is in two parts: /d/1\.wav \(train\) and "
                                        r"/d/3\.wav \(test\)$"):
        check_split(t, parts, speaker_independent=False, where="fold 2")


def test_speaker_in_two_parts_only_when_speaker_independent():
    t = tiny_table([("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")])
    parts = pd.Series(["train", "test", "train", "train"])
    with pytest.raises(DataError, match=r"^split: speaker a is in (test and train|train and test) "):
        check_split(t, parts)
    check_split(t, parts, speaker_independent=False)


def test_class_without_training_clips_names_class_speakers_and_parts():
    t = tiny_table([("a", "x"), ("a", "y"), ("b", "x"), ("c", "z"), ("d", "z"), ("e", "x")])
    parts = pd.Series(["train", "train", "train", "val", "test", "val"])
    with pytest.raises(DataError) as info:
        check_split(t, parts, where="outer fold 1")
    message = str(info.value)
    assert message == ("outer fold 1: class 'z' has no clip in the train part: its speakers are c (val), "
                       "d (test); drop it with the corpus option drop_labels: [z]")
    assert "\n" not in message


def test_check_split_rejects_an_assignment_of_another_table(table):
    with pytest.raises(DataError, match="index does not match"):
        check_split(table, pd.Series(["train"] * 3))


# --- make_split runs it -------------------------------------------------------------------------
@pytest.fixture()
def rare_class_corpus(tmp_path):
    """A CSV corpus of 4 speakers x 3 classes, and a 'surprise' class that only speaker s4 has."""
    rows = ["path,label,speaker,gender"]
    for s in range(1, 5):
        for c, label in enumerate(("anger", "sadness", "neutral")):
            for k in range(2):
                name = f"s{s}_{label}_{k}.wav"
                write_wav(tmp_path / name, freq=150 + 40 * s + 9 * c + 3 * k)
                rows.append(f"{name},{label},s{s},{'f' if s % 2 else 'm'}")
    for k in range(2):
        write_wav(tmp_path / f"s4_surprise_{k}.wav", freq=700 + 10 * k)
        rows.append(f"s4_surprise_{k}.wav,surprise,s4,m")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_a_class_whose_only_speaker_is_held_out_stops_the_fold(rare_class_corpus):
    corpus = load_corpus("csv", rare_class_corpus)
    folds = leave_speakers_out_folds(corpus.table, k=4, seed=0, val_speakers=1)
    refused = 0
    for i, fold in enumerate(folds):
        spec = {"kind": "fold", "k": 4, "fold": i, "seed": 0, "val_speakers": 1}
        if "s4" in fold.speakers(corpus.table, "train"):
            make_split(corpus.table, spec)
            continue
        with pytest.raises(DataError, match=r"^split \(fold\): class 'surprise' has no clip in the train "
                                            r"part: its speakers are s4 \((val|test)\); drop it with the "
                                            r"corpus option drop_labels: \[surprise\]$"):
            make_split(corpus.table, spec)
        refused += 1
    assert refused >= 1
    dropped = load_corpus("csv", rare_class_corpus, drop_labels=["surprise"])
    for i in range(4):
        make_split(dropped.table, {"kind": "fold", "k": 4, "fold": i, "seed": 0, "val_speakers": 1})


def test_speaker_split_keeps_a_single_speaker_class_in_train(rare_class_corpus):
    table = load_corpus("csv", rare_class_corpus).table
    for seed in range(6):
        split = make_split(table, {"kind": "speaker", "val_speakers": 1, "test_speakers": 1, "seed": seed})
        assert "s4" in split.speakers(table, "train"), seed


def test_speaker_kind_refuses_when_no_split_can_train_every_class():
    # Three speakers, one val and one test: classes only s1 / only s2 has cannot both stay in train.
    t = tiny_table([("s1", "x"), ("s1", "p"), ("s2", "x"), ("s2", "q"), ("s3", "x")])
    with pytest.raises(DataError, match=r"^split \(speaker\): class '[pq]' has no clip in the train part"):
        make_split(t, {"kind": "speaker", "val_speakers": 1, "test_speakers": 1, "seed": 0})


# --- speaker_folds ------------------------------------------------------------------------------
def test_speaker_folds_partition_the_speakers(table):
    for k in (2, 3, 8):
        folds = speaker_folds(table, k, seed=0)
        assert len(folds) == k
        held = [set(table.loc[f, "speaker"]) for f in folds]
        assert sum(len(h) for h in held) == table["speaker"].nunique()         # each speaker once
        assert set().union(*held) == set(table["speaker"])
        assert max(map(len, held)) - min(map(len, held)) <= 1
        assert np.array_equal(np.sum(folds, axis=0), np.ones(len(table)))      # each row held out once
        for f in folds:   # whole speakers: a held-out speaker has no row outside its fold
            assert not set(table.loc[f, "speaker"]) & set(table.loc[~f, "speaker"])


def test_speaker_folds_are_seeded(table):
    a, b = speaker_folds(table, 4, seed=5), speaker_folds(table, 4, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    layouts = {tuple(tuple(sorted(set(table.loc[f, "speaker"]))) for f in speaker_folds(table, 4, seed=s))
               for s in range(6)}
    assert len(layouts) >= 3


def test_speaker_folds_stratify_by_label():
    t = unbalanced_table()
    overall = t["label"].value_counts(normalize=True)

    def spread(folds):
        return max(0.5 * (t.loc[f, "label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
                          - overall).abs().sum() for f in folds)

    chosen = [spread(speaker_folds(t, 5, seed=s)) for s in range(4)]
    rng = np.random.default_rng(0)
    speakers = sorted(t["speaker"].unique())
    random = []
    for _ in range(40):
        order = rng.permutation(speakers)
        random.append(spread([t["speaker"].isin(order[i::5]).to_numpy() for i in range(5)]))
    assert max(chosen) < np.median(random)


def test_speaker_folds_of_some_rows(table):
    rows = table["speaker"].isin(sorted(table["speaker"].unique())[:5]).to_numpy()
    folds = speaker_folds(table, 5, seed=1, rows=rows)
    assert all(not (f & ~rows).any() for f in folds)
    assert sorted(s for f in folds for s in set(table.loc[f, "speaker"])) == sorted(table.loc[rows, "speaker"].unique())


def test_speaker_folds_bad_k(table):
    with pytest.raises(DataError, match=r"k: 9 folds need an integer from 2 to the number of speakers \(8\)"):
        speaker_folds(table, 9, seed=0)
    with pytest.raises(DataError, match=r"k: 1 folds need .*\(8\)"):
        speaker_folds(table, 1, seed=0)
    with pytest.raises(DataError, match="rows: expected a boolean mask"):
        speaker_folds(table, 2, seed=0, rows=[0, 1])


# --- outer_fold_assignments ---------------------------------------------------------------------
def test_one_outer_fold_is_todays_speaker_split(table):
    t = unbalanced_table()
    for data in (table, t):
        for seed in range(3):
            for val, test in ((2, 2), (1, 1), (0.2, 0.2), (1, 3)):
                [only] = outer_fold_assignments(data, 1, val_speakers=val, test_speakers=test, seed=seed)
                expected = speaker_split(data, val_speakers=val, test_speakers=test, seed=seed).assignment
                assert only.equals(expected), (seed, val, test)


def test_outer_folds_test_every_speaker_once(table):
    folds = outer_fold_assignments(table, 4, val_speakers=1, seed=0)
    assert len(folds) == 4
    tested = [s for a in folds for s in set(table.loc[a == "test", "speaker"])]
    assert sorted(tested) == sorted(table["speaker"].unique())
    for a in folds:
        assert set(a) == {"train", "val", "test"}
        parts = {p: set(table.loc[a == p, "speaker"]) for p in ("train", "val", "test")}
        assert len(parts["val"]) == 1 and len(parts["test"]) == 2 and len(parts["train"]) == 5
        assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
        check_split(table, a)
    again = outer_fold_assignments(table, 4, val_speakers=1, seed=0)
    assert all(x.equals(y) for x, y in zip(folds, again))
    other = outer_fold_assignments(table, 4, val_speakers=1, seed=1)
    assert not all(x.equals(y) for x, y in zip(folds, other))


def test_outer_folds_bad_sizes(table):
    with pytest.raises(DataError, match="n_folds: must be an integer >= 1"):
        outer_fold_assignments(table, 0, val_speakers=1, seed=0)
    with pytest.raises(DataError, match="val_speakers: 6 is too many: outer fold 0 leaves 6 speakers"):
        outer_fold_assignments(table, 4, val_speakers=6, seed=0)
