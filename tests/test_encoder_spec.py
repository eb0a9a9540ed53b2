"""Encoder specs are parsed once, into EncoderSpec: its family and source, and back to the same text."""
from __future__ import annotations

import pytest

from ser_tune.encoders import EncoderError, EncoderSpec, resolve_spec


@pytest.mark.parametrize("text, family, source", [
    ("hf:openai/whisper-base", "hf", "openai/whisper-base"),
    ("speechbrain:speechbrain/emotion-recognition-wav2vec2-IEMOCAP", "speechbrain",
     "speechbrain/emotion-recognition-wav2vec2-IEMOCAP"),
    ("hf:C:/models/w2v", "hf", "C:/models/w2v"),      # only the first colon separates
    ("tiny-wav2vec2", "tiny", "wav2vec2"),
])
def test_a_spec_parses_into_its_family_and_source_and_back(text, family, source):
    spec = EncoderSpec.parse(text)
    assert (spec.family, spec.source) == (family, source)
    assert str(spec) == text


@pytest.mark.parametrize("text, words", [
    ("", "non-empty string"), ("hf:", "names no model"), ("tiny-lstm", "tiny encoders: tiny-"),
    ("whisper", "unknown encoder 'whisper'"), ("onnx:model", "unknown encoder 'onnx:model'"),
])
def test_a_bad_spec_is_one_line_naming_it(text, words):
    with pytest.raises(EncoderError, match=words):
        EncoderSpec.parse(text)


def test_a_relative_folder_resolves_against_the_bases_first(tmp_path):
    (tmp_path / "model").mkdir()
    assert resolve_spec("hf:model", [tmp_path]) == f"hf:{tmp_path / 'model'}"
    assert resolve_spec("hf:org/not-here", [tmp_path]) == "hf:org/not-here"   # a hub id stays as it is
    assert resolve_spec("tiny-whisper", [tmp_path]) == "tiny-whisper"
