"""label_maps.yaml: the one home of label knowledge, and map_labels over it."""
from __future__ import annotations

import math

import pandas as pd

from ser_tune.data import EMOTIONS, LabelMapper, label_maps, map_labels, pick_view


def test_emotions_are_emodbs_seven():
    assert EMOTIONS == ("anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness")
    assert sorted(label_maps()["codes"]["emodb"].values()) == list(EMOTIONS)


def test_emodb_letters():
    codes = label_maps()["codes"]["emodb"]
    assert codes["A"] == "fear" and codes["W"] == "anger" and codes["E"] == "disgust"
    assert codes["L"] == "boredom" and codes["T"] == "sadness" and codes["F"] == "happiness"


def test_every_view_targets_known_names():
    maps = label_maps()
    for view in ("emodb7", "iemocap4"):
        assert set(maps["views"][view].values()) <= set(EMOTIONS)
    assert set(maps["views"]["emodb7"].values()) == set(EMOTIONS)
    for corpus, view in maps["defaults"].items():
        assert view is None or view in maps["views"], corpus


def test_map_labels_codes_names_and_unmapped():
    out = map_labels(pd.Series(["02", "08", "05", "calm"], index=[10, 11, 12, 13]), "ravdess", "emodb7")
    assert out.index.tolist() == [10, 11, 12, 13]
    assert out[10] == "boredom" and math.isnan(out[11]) and out[12] == "anger" and out[13] == "boredom"
    iemocap = map_labels(pd.Series(["exc", "hap", "fru", "xxx", "neu"]), "iemocap", "iemocap4")
    assert iemocap.tolist()[:2] == ["happiness", "happiness"]
    assert iemocap.isna().tolist() == [False, False, True, True, False]
    assert map_labels(pd.Series(["A", "W"]), "emodb", "emodb7").tolist() == ["fear", "anger"]


def test_native_view_keeps_user_classes():
    out = map_labels(pd.Series(["happy", "grumpy", None]), "csv", "native")
    assert out[0] == "happiness" and out[1] == "grumpy" and math.isnan(out[2])


def test_label_maps_is_a_copy():
    label_maps()["codes"]["emodb"]["A"] = "anger"
    assert label_maps()["codes"]["emodb"]["A"] == "fear"


RAVDESS_NATIVE = ["neutral", "calm", "happiness", "sadness", "anger", "fear", "disgust", "surprise"]


def test_each_corpus_alone_is_read_in_its_own_classes():
    defaults = label_maps()["defaults"]
    assert (defaults["ravdess"], defaults["cremad"]) == ("native", "native")
    assert (defaults["emodb"], defaults["synthetic"], defaults["iemocap"]) == ("emodb7", "emodb7", "iemocap4")
    assert sorted(label_maps()["codes"]["ravdess"].values()) == sorted(RAVDESS_NATIVE)
    assert label_maps()["codes"]["synthetic"] == label_maps()["codes"]["emodb"]   # written in EmoDB naming


def test_label_mapper_exact_name_then_canonical_emotion():
    mapper = LabelMapper(["angry", "happiness", "sad"])
    assert mapper("angry") == "angry" and mapper("anger") == "angry"
    assert mapper("joy") == "happiness" and mapper("sadness") == "sad"
    assert mapper("calm") is None and mapper(float("nan")) is None


def test_pick_view_covers_most_of_the_models_labels():
    assert pick_view("ravdess", list(EMOTIONS)) == "emodb7"            # calm -> boredom brings boredom in
    assert pick_view("emodb", RAVDESS_NATIVE) == "native"             # ties go to the corpus's own classes
    assert pick_view("ravdess", RAVDESS_NATIVE) == "native"
    assert pick_view("cremad", list(EMOTIONS)) == "native"            # its six classes are EmoDB names
    # IEMOCAP's four-class model: iemocap4 also brings excitement onto happiness.
    assert pick_view("iemocap", ["anger", "happiness", "neutral", "sadness"]) == "iemocap4"
    assert pick_view("synthetic", ["angry", "sad"]) == "native"       # aliases count as the same emotion
    assert pick_view("csv", list(EMOTIONS)) is None                   # a manifest's labels as given
