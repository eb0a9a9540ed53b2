"""Every corpus loader on tiny fixtures written in that corpus's own naming."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ser_tune.data import CORPORA, CorpusError, DataError, load_corpus
from fixtures_corpora import (make_cremad, make_csv_manifest, make_emodb, make_iemocap, make_ravdess,
                              write_wav)

BASE_COLUMNS = ["path", "label", "speaker", "corpus", "duration", "sample_rate"]


def by_name(corpus):
    return {p.rsplit("/", 1)[-1]: row for p, row in zip(corpus.table["path"], corpus.table.to_dict("records"))}


def skipped_reasons(corpus):
    return {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in corpus.skipped}


def test_corpora_names():
    assert CORPORA == ("emodb", "ravdess", "cremad", "iemocap", "csv", "synthetic")


@pytest.mark.parametrize("layout", [True, False], ids=["wav-folder", "flat"])
def test_emodb_letters_speakers_and_skips(tmp_path, layout):
    corpus = load_corpus("emodb", make_emodb(tmp_path, distribution_layout=layout))
    assert list(corpus.table.columns[:6]) == BASE_COLUMNS
    rows = by_name(corpus)
    assert rows["03a01Aa.wav"]["label"] == "fear"        # A = Angst
    assert rows["03a01Wa.wav"]["label"] == "anger"       # W = Wut
    assert rows["08a02Fb.wav"]["label"] == "happiness"
    assert rows["08b01Ta.wav"]["label"] == "sadness"
    assert rows["09a05La.wav"]["label"] == "boredom"
    assert rows["10b02Ea.wav"]["label"] == "disgust"
    assert rows["09a04Nc.wav"]["label"] == "neutral"
    assert rows["03a01Wa.wav"]["speaker"] == "03" and rows["03a01Wa.wav"]["gender"] == "m"
    assert rows["08a02Fb.wav"]["gender"] == "f" and rows["08a02Fb.wav"]["text"] == "a02"
    assert rows["03a01Wa.wav"]["sample_rate"] == 16000
    assert rows["03a01Wa.wav"]["duration"] == pytest.approx(0.3)
    assert all(p.startswith("/") for p in corpus.table["path"])
    assert corpus.table.index.tolist() == list(range(8))
    reasons = skipped_reasons(corpus)
    assert "'X'" in reasons["03a01Xa.wav"] and "unknown" in reasons["03a01Xa.wav"]
    assert "not an EmoDB file name" in reasons["readme_tone.wav"]
    assert corpus.synthetic is False and set(corpus.table["corpus"]) == {"emodb"}
    assert corpus.labels == sorted(corpus.labels) and len(corpus.labels) == 7


def test_emodb_label_view_iemocap4_drops_other_classes(tmp_path):
    corpus = load_corpus("emodb", make_emodb(tmp_path), label_map="iemocap4")
    assert corpus.labels == ["anger", "happiness", "neutral", "sadness"]
    reasons = skipped_reasons(corpus)
    assert reasons["03a01Aa.wav"] == "'fear' (code A) has no counterpart in view iemocap4"


def test_ravdess_speech_48k_stereo_and_views(tmp_path):
    # RAVDESS alone is read in its own eight classes; EmoDB's seven (emodb7) on request.
    corpus = load_corpus("ravdess", make_ravdess(tmp_path))
    rows = by_name(corpus)
    assert len(corpus.table) == 8
    assert set(corpus.labels) == {"neutral", "calm", "happiness", "sadness", "anger", "fear", "disgust",
                                  "surprise"}
    assert rows["03-01-02-01-02-01-02.wav"]["label"] == "calm"
    assert rows["03-01-08-01-01-01-04.wav"]["label"] == "surprise"
    assert rows["03-01-02-01-02-01-02.wav"]["gender"] == "f"
    assert rows["03-01-05-02-01-01-01.wav"]["label"] == "anger"
    assert rows["03-01-05-02-01-01-01.wav"]["intensity"] == "strong"
    assert rows["03-01-05-02-01-01-01.wav"]["gender"] == "m"
    assert rows["03-01-05-02-01-01-01.wav"]["speaker"] == "01"
    assert rows["03-01-06-01-01-01-03.wav"]["label"] == "fear"
    assert set(corpus.table["sample_rate"]) == {48000}
    assert "not audio-only speech" in skipped_reasons(corpus)["03-02-05-01-01-01-04.wav"]

    emodb7 = load_corpus("ravdess", tmp_path, label_map="emodb7")
    rows = by_name(emodb7)
    assert len(emodb7.table) == 7
    assert rows["03-01-02-01-02-01-02.wav"]["label"] == "boredom"          # calm -> boredom
    assert rows["03-01-02-01-02-01-02.wav"]["original_label"] == "calm"
    assert "no counterpart in view emodb7" in skipped_reasons(emodb7)["03-01-08-01-01-01-04.wav"]
    native = load_corpus("ravdess", tmp_path, label_map="native")
    assert native.table.drop(columns="content_hash").equals(corpus.table.drop(columns="content_hash"))


def test_cremad_levels_demographics_and_x_level(tmp_path):
    corpus = load_corpus("cremad", make_cremad(tmp_path))
    rows = by_name(corpus)
    assert len(corpus.table) == 7
    assert rows["1040_ITH_SAD_X.wav"]["label"] == "sadness"
    assert rows["1040_ITH_SAD_X.wav"]["intensity"] == "unspecified"
    assert rows["1001_IEO_HAP_LO.wav"]["intensity"] == "low"
    assert rows["1001_DFA_ANG_XX.wav"]["gender"] == "m"
    assert rows["1002_TIE_SAD_HI.wav"]["gender"] == "f"
    assert rows["1091_IEO_DIS_LO.wav"]["speaker"] == "1091"
    assert corpus.labels == ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]   # its own six
    assert "unknown CREMA-D emotion code 'BOR'" in skipped_reasons(corpus)["1001_DFA_BOR_XX.wav"]
    # Read as a flat folder of its wavs (AudioWAV itself): genders come from the csv one level up.
    flat = load_corpus("cremad", tmp_path / "AudioWAV")
    assert flat.table["gender"].notna().all()


def test_cremad_without_demographics_has_unknown_gender(tmp_path):
    corpus = load_corpus("cremad", make_cremad(tmp_path, demographics=False))
    assert corpus.table["gender"].isna().all()


def test_cremad_bad_demographics_names_file_and_column(tmp_path):
    make_cremad(tmp_path)
    (tmp_path / "VideoDemographics.csv").write_text("ActorID,Age\n1001,51\n")
    with pytest.raises(CorpusError, match=r"VideoDemographics\.csv: missing column 'Sex'"):
        load_corpus("cremad", tmp_path)


def test_iemocap_labels_speakers_dimensions(tmp_path):
    corpus = load_corpus("iemocap", make_iemocap(tmp_path))
    rows = by_name(corpus)
    assert sorted(rows) == ["Ses01F_impro01_F000.wav", "Ses01F_impro01_F001.wav", "Ses01F_impro01_M000.wav",
                            "Ses02M_script01_1_F000.wav", "Ses02M_script01_1_M000.wav"]
    f000 = rows["Ses01F_impro01_F000.wav"]
    assert f000["label"] == "neutral" and f000["speaker"] == "Ses01F" and f000["session"] == "Ses01"
    m000 = rows["Ses01F_impro01_M000.wav"]
    assert m000["speaker"] == "Ses01M" and m000["gender"] == "m" and m000["label"] == "anger"
    # [V, A, D] bracket order: valence 1.5, activation 4.0, dominance 4.5
    assert (m000["valence"], m000["arousal"], m000["dominance"]) == (1.5, 4.0, 4.5)
    assert rows["Ses01F_impro01_F001.wav"]["label"] == "happiness"          # exc merged
    assert rows["Ses01F_impro01_F001.wav"]["original_label"] == "excitement"
    assert rows["Ses02M_script01_1_M000.wav"]["label"] == "happiness"
    assert rows["Ses02M_script01_1_F000.wav"]["speaker"] == "Ses02F"
    assert corpus.labels == ["anger", "happiness", "neutral", "sadness"]
    reasons = skipped_reasons(corpus)
    assert "(code xxx) has no counterpart in view iemocap4" in reasons["Ses01F_impro01_M001.wav"]
    assert "(code fru) has no counterpart in view iemocap4" in reasons["Ses02M_script01_1_M001.wav"]
    assert "dialog-level" in reasons["Ses01F_impro01.wav"]


def test_iemocap_malformed_label_line_names_file_and_line(tmp_path):
    make_iemocap(tmp_path)
    evaluation = next(tmp_path.rglob("EmoEvaluation/Ses01F_impro01.txt"))
    evaluation.write_text(evaluation.read_text() + "[1.0 - oops]\tSes01F_impro01_F009\tneu\n")
    with pytest.raises(CorpusError, match=r"Ses01F_impro01\.txt:\d+: malformed"):
        load_corpus("iemocap", tmp_path)


def test_iemocap_without_label_files(tmp_path):
    write_wav(tmp_path / "Ses01F_impro01_F000.wav")
    with pytest.raises(CorpusError, match="no IEMOCAP label files"):
        load_corpus("iemocap", tmp_path)


def test_csv_manifest_relative_paths_optional_columns(tmp_path):
    make_csv_manifest(tmp_path)
    for root in (tmp_path, tmp_path / "manifest.csv"):
        corpus = load_corpus("csv", root)
        rows = by_name(corpus)
        assert sorted(rows) == ["clip0.wav", "clip1.wav", "clip2.wav", "clip3.wav", "clip4.wav"]
        assert rows["clip0.wav"]["path"] == str((tmp_path / "audio" / "clip0.wav").resolve())
        assert rows["clip0.wav"]["label"] == "happy"                # kept as given
        assert rows["clip4.wav"]["label"] == "grumpy"
        assert rows["clip2.wav"]["gender"] == "m" and rows["clip0.wav"]["gender"] == "f"
        assert rows["clip0.wav"]["arousal"] == 3.5 and math.isnan(rows["clip3.wav"]["valence"])
        assert "dominance" not in corpus.table.columns
        reasons = skipped_reasons(corpus)
        assert reasons["missing.wav"] == "file not found"
        assert "empty 'label'" in reasons["clip5.wav"]


def test_csv_manifest_with_label_map(tmp_path):
    corpus = load_corpus("csv", make_csv_manifest(tmp_path), label_map="emodb7")
    rows = by_name(corpus)
    assert rows["clip0.wav"]["label"] == "happiness" and rows["clip1.wav"]["label"] == "anger"
    assert rows["clip2.wav"]["label"] == "boredom"
    assert "no counterpart in view emodb7" in skipped_reasons(corpus)["clip4.wav"]


def test_csv_manifest_missing_column_names_file_and_column(tmp_path):
    write_wav(tmp_path / "a.wav")
    (tmp_path / "manifest.csv").write_text("path,label\na.wav,happy\n")
    with pytest.raises(CorpusError, match=r"manifest\.csv: missing column 'speaker'"):
        load_corpus("csv", tmp_path)


def test_csv_manifest_non_numeric_dimension(tmp_path):
    write_wav(tmp_path / "a.wav")
    (tmp_path / "manifest.csv").write_text("path,label,speaker,arousal\na.wav,happy,s1,high\n")
    with pytest.raises(CorpusError, match=r"manifest\.csv: column 'arousal', line 2: not a number"):
        load_corpus("csv", tmp_path)


def test_unknown_corpus_view_and_option(tmp_path):
    make_emodb(tmp_path)
    with pytest.raises(DataError, match="unknown corpus 'timit'"):
        load_corpus("timit", tmp_path)
    with pytest.raises(DataError, match="label_map: unknown view 'emodb9'"):
        load_corpus("emodb", tmp_path, label_map="emodb9")
    with pytest.raises(DataError, match="takes no options"):
        load_corpus("emodb", tmp_path, seed=3)


def test_check_audio_false_reads_headers_only(tmp_path):
    make_emodb(tmp_path)
    silent = tmp_path / "wav" / "11a01Wa.wav"
    write_wav(silent, amplitude=0.0)
    checked = load_corpus("emodb", tmp_path)
    unchecked = load_corpus("emodb", tmp_path, check_audio=False)
    assert str(silent.resolve()) not in set(checked.table["path"])
    assert str(silent.resolve()) in set(unchecked.table["path"])


def test_summary_counts(tmp_path):
    corpus = load_corpus("ravdess", make_ravdess(tmp_path), label_map="emodb7")
    s = corpus.summary()
    assert s["files"] == 7 and s["speakers"] == 4
    assert sum(s["labels"].values()) == 7 and s["labels"]["boredom"] == 1
    assert s["sample_rates"] == [48000]
    assert s["duration"]["min"] == pytest.approx(0.3)
    assert len(s["skipped"]) == 2 and {"path", "reason"} <= set(s["skipped"][0])
    assert s["dropped_labels"] == {}
    assert np.isclose(s["duration"]["mean"], corpus.table["duration"].mean())
