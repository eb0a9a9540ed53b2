"""The real EmoDB copy at ../shared/data/emodb (skips when absent)."""
from __future__ import annotations

import pytest

from ser_tune.data import load_audio, load_corpus, speaker_split

pytestmark = pytest.mark.real_data

COUNTS = {"anger": 127, "boredom": 81, "disgust": 46, "fear": 69, "happiness": 71, "neutral": 79, "sadness": 62}


@pytest.fixture(scope="module")
def emodb(emodb_root):
    return load_corpus("emodb", emodb_root)


def test_emodb_counts(emodb):
    s = emodb.summary()
    assert s["files"] == 535 and s["speakers"] == 10
    assert s["labels"] == COUNTS
    assert s["skipped"] == [] and s["sample_rates"] == [22050]
    assert sorted(emodb.table["speaker"].unique()) == ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]
    assert emodb.table.groupby("speaker")["gender"].first().value_counts().to_dict() == {"f": 5, "m": 5}


def test_emodb_audio_and_split(emodb):
    wave = load_audio(emodb.table["path"][0], 16000)
    assert abs(len(wave) - 32000) <= 1
    split = speaker_split(emodb.table, val_speakers=2, test_speakers=2, seed=0)
    for part in ("val", "test"):
        present = set(split.part(emodb.table, part)["label"])
        assert present == set(COUNTS), part
