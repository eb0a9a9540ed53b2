"""Loader hardening: symbolic links and link loops, minimum duration, truncated wavs, unread audio
formats, one clip per file (spellings, links, identical bytes), drop_labels; predict's header checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from ser_tune.data import MIN_DURATION, AudioError, CorpusError, DataError, audio_info, load_corpus
from ser_tune.data.__main__ import main as summary_main
from ser_tune.data.audio import UNREAD_FORMATS, wav_truncation
from fixtures_corpora import (make_cremad, make_csv_manifest, make_emodb, make_iemocap, make_ravdess,
                              make_ravdess_linked, truncate, wav_with_odd_chunk, write_wav)

MAKERS = {"emodb": make_emodb, "ravdess": make_ravdess, "cremad": make_cremad, "iemocap": make_iemocap}


def reasons_by_name(corpus):
    return {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in corpus.skipped}


# --- symbolic links ---------------------------------------------------------------------------
def test_ravdess_with_actor_folders_as_links_loads_like_the_real_folders(tmp_path):
    linked = load_corpus("ravdess", make_ravdess_linked(tmp_path / "ravdess", tmp_path / "store"))
    plain = load_corpus("ravdess", tmp_path / "store")
    assert len(linked.table) == len(plain.table) == 8
    assert linked.table.drop(columns="path").equals(plain.table.drop(columns="path"))
    assert sorted(linked.table["speaker"].unique()) == ["01", "02", "03", "04"]


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_a_link_loop_neither_hangs_nor_repeats_clips(tmp_path, name):
    root = MAKERS[name](tmp_path / name)
    expected = load_corpus(name, root)
    deepest = max((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
    (deepest / "loop").symlink_to(root, target_is_directory=True)        # back up to the corpus folder
    (root / "self").symlink_to(".", target_is_directory=True)            # a folder linking to itself
    looped = load_corpus(name, root)
    assert looped.table.equals(expected.table) and looped.skipped == expected.skipped


def test_file_links_to_one_file_count_once(tmp_path):
    root = make_emodb(tmp_path / "emodb")
    original = root / "wav" / "03a01Wa.wav"
    (root / "again").mkdir()
    (root / "again" / "03a01Wa.wav").symlink_to(original)
    corpus = load_corpus("emodb", root)
    assert len(corpus.table) == 8
    repeat = [s for s in corpus.skipped if s["reason"].startswith("duplicate:")]
    assert len(repeat) == 1 and repeat[0]["path"] == str(original)
    # Walked in sorted order: again/ comes first, the original is the repeat; both are named.
    assert repeat[0]["reason"] == f"duplicate: {original} is the same file as {root / 'again' / '03a01Wa.wav'}"


def test_links_to_one_file_under_two_labels_stop_naming_both(tmp_path):
    root = make_emodb(tmp_path / "emodb")
    (root / "wav" / "03a02Fa.wav").symlink_to(root / "wav" / "03a01Wa.wav")   # the anger clip as happiness
    with pytest.raises(CorpusError, match=r"03a01Wa\.wav is listed with labels anger and happiness"):
        load_corpus("emodb", root)


# --- minimum duration, truncation, formats ----------------------------------------------------
def test_short_clips_are_skipped_naming_duration_and_minimum(tmp_path):
    root = make_emodb(tmp_path)
    write_wav(root / "wav" / "11a01Wa.wav", seconds=0.1)
    corpus = load_corpus("emodb", root)
    assert MIN_DURATION == 0.25
    assert reasons_by_name(corpus)["11a01Wa.wav"] == "too short: 0.100 s, the minimum is 0.25 s (min_duration)"
    assert "11a01Wa.wav" not in " ".join(corpus.table["path"])
    # Configurable per load: 0.05 s keeps it, 0.5 s drops every 0.3 s fixture clip too.
    assert len(load_corpus("emodb", root, min_duration=0.05).table) == 9
    with pytest.raises(CorpusError, match="no usable emodb clips left"):
        load_corpus("emodb", root, min_duration=0.5)
    with pytest.raises(DataError, match="min_duration: must be a number of seconds >= 0"):
        load_corpus("emodb", root, min_duration=-1)
    # With check_audio=False (headers only) the minimum still holds.
    assert "11a01Wa.wav" in reasons_by_name(load_corpus("emodb", root, check_audio=False))


def test_truncated_wav_is_skipped_with_declared_and_held_sizes(tmp_path):
    root = make_emodb(tmp_path)
    path = truncate(write_wav(root / "wav" / "11a01Wa.wav", seconds=1.0))
    info = sf.info(str(path))
    assert info.frames > 0   # libsndfile alone would read the cut file as a shorter clip
    corpus = load_corpus("emodb", root, min_duration=0.0)
    assert reasons_by_name(corpus)["11a01Wa.wav"] == \
        "truncated: the header declares 32000 bytes of audio, the file holds 956"
    with pytest.raises(AudioError, match="truncated"):
        audio_info(path, scan_samples=False)


def test_riff_chunks_parsed_only_as_far_as_needed(tmp_path):
    odd = wav_with_odd_chunk(tmp_path / "odd.wav")
    assert wav_truncation(odd) is None
    assert audio_info(odd) == (0.5, 16000)
    assert wav_truncation(truncate(wav_with_odd_chunk(tmp_path / "odd_cut.wav"), 2000)) == \
        "truncated: the header declares 16000 bytes of audio, the file holds 1944"   # 2000 - 56 header bytes
    rf64 = tmp_path / "rf64.wav"
    sf.write(str(rf64), 0.2 * np.sin(np.arange(8000) / 3.0), 16000, format="RF64", subtype="PCM_16")
    assert wav_truncation(rf64) is None and audio_info(rf64) == (0.5, 16000)   # left to soundfile
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfm")
    assert wav_truncation(tmp_path / "junk.wav") is None


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_folder_loaders_list_unread_audio_formats(tmp_path, name):
    root = MAKERS[name](tmp_path / name)
    wavs = sorted(root.rglob("*.wav"))
    flac = wavs[0].with_suffix(".flac")
    sf.write(str(flac), 0.2 * np.sin(np.arange(8000) / 3.0), 16000, format="FLAC")
    mp3 = wavs[-1].with_suffix(".MP3")
    mp3.write_bytes(b"ID3 not really")
    reasons = {s["path"]: s["reason"] for s in load_corpus(name, root).skipped}
    assert reasons[str(flac)] == "audio format .flac is not read; convert to 16-bit .wav"
    assert reasons[str(mp3)] == "audio format .mp3 is not read; convert to 16-bit .wav"
    assert {".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff", ".mp4",
            ".webm"} == set(UNREAD_FORMATS)


def test_csv_row_naming_an_unread_format_is_skipped(tmp_path):
    root = make_csv_manifest(tmp_path)
    sf.write(str(root / "audio" / "x.ogg"), 0.2 * np.sin(np.arange(8000) / 3.0), 16000, format="OGG")
    with open(root / "manifest.csv", "a") as f:
        f.write("audio/x.ogg,happy,s4,f,3.0,3.0\n")
    corpus = load_corpus("csv", root)
    assert reasons_by_name(corpus)["x.ogg"] == "audio format .ogg is not read; convert to 16-bit .wav"
    assert len(corpus.table) == 5


# --- one clip per file ------------------------------------------------------------------------
def manifest(root, lines):
    (root / "manifest.csv").write_text("path,label,speaker\n" + "\n".join(lines) + "\n")
    return root


def test_two_spellings_of_one_file_count_once(tmp_path):
    write_wav(tmp_path / "sub" / "a.wav")
    write_wav(tmp_path / "sub" / "b.wav", freq=300)
    corpus = load_corpus("csv", manifest(tmp_path, ["sub/a.wav,happy,1", "./sub/a.wav,happy,1",
                                                    f"{tmp_path}/sub/../sub/a.wav,happy,1", "sub/b.wav,sad,2"]))
    assert len(corpus.table) == 2
    repeats = [s["reason"] for s in corpus.skipped]
    assert repeats == ["duplicate: line 3 (./sub/a.wav) is the same file as line 2 (sub/a.wav)",
                       f"duplicate: line 4 ({tmp_path}/sub/../sub/a.wav) is the same file as line 2 (sub/a.wav)"]


def test_a_leaking_manifest_stops_with_one_line(tmp_path):
    write_wav(tmp_path / "sub" / "a.wav")
    manifest(tmp_path, ["sub/a.wav,happy,1", "./sub/a.wav,happy,2"])
    with pytest.raises(CorpusError) as info:
        load_corpus("csv", tmp_path)
    assert str(info.value) == f"{tmp_path / 'manifest.csv'}: {tmp_path / 'sub' / 'a.wav'} is listed with speakers 1 and 2"
    manifest(tmp_path, ["sub/a.wav,happy,1", "sub/a.wav,sad,1"])
    with pytest.raises(CorpusError, match=r"a\.wav is listed with labels happy and sad$"):
        load_corpus("csv", tmp_path)


def test_identical_bytes_under_two_paths_count_once(tmp_path):
    root = make_emodb(tmp_path)
    shutil.copyfile(root / "wav" / "08a02Fb.wav", root / "wav" / "16a02Fb.wav")
    corpus = load_corpus("emodb", root)
    assert len(corpus.table) == 8 and corpus.table["content_hash"].is_unique
    assert reasons_by_name(corpus)["16a02Fb.wav"] == f"identical bytes to {root / 'wav' / '08a02Fb.wav'}"
    hashes = load_corpus("emodb", root, check_audio=False).table["content_hash"]
    assert hashes.str.fullmatch(r"[0-9a-f]{32}").all()


# --- drop_labels ------------------------------------------------------------------------------
def test_drop_labels_after_the_view_and_listed_in_the_summary(tmp_path):
    root = make_ravdess(tmp_path)
    corpus = load_corpus("ravdess", root, drop_labels=["surprise", "calm"])
    assert "surprise" not in corpus.labels and "calm" not in corpus.labels and len(corpus.table) == 6
    assert corpus.summary()["dropped_labels"] == {"calm": 1, "surprise": 1}
    with pytest.raises(DataError, match=r"drop_labels: unknown class 'boredom' \(classes present: anger, calm,"):
        load_corpus("ravdess", root, drop_labels=["boredom"])      # boredom exists in emodb7, not here
    assert load_corpus("ravdess", root, label_map="emodb7", drop_labels=["boredom"]).dropped_labels == {"boredom": 1}
    with pytest.raises(DataError, match="drop_labels: expected a list of class names"):
        load_corpus("ravdess", root, drop_labels="calm")


def test_drop_labels_on_the_synthetic_corpus(synthetic_root):
    corpus = load_corpus("synthetic", synthetic_root, drop_labels=["disgust"])
    assert "disgust" not in corpus.labels and corpus.dropped_labels == {"disgust": 32}


def test_summary_cli_shows_new_reasons_and_dropped_labels(tmp_path, capsys):
    root = make_ravdess(tmp_path)
    truncate(write_wav(root / "Actor_01" / "03-01-04-01-01-02-01.wav", sr=48000, seconds=1.0))
    write_wav(root / "Actor_02" / "03-01-04-01-02-02-02.wav", seconds=0.1)
    (root / "Actor_03" / "03-01-03-01-01-02-03.flac").write_bytes(b"fLaC")
    assert summary_main(["--corpus", "ravdess", "--root", str(root), "--drop-labels", "surprise,calm"]) == 0
    out = capsys.readouterr().out
    assert "dropped labels: calm (1 clips), surprise (1 clips)" in out
    assert "03-01-04-01-01-02-01.wav: truncated: the header declares 96000 bytes of audio" in out
    assert "03-01-04-01-02-02-02.wav: too short: 0.100 s" in out
    assert "03-01-03-01-01-02-03.flac: audio format .flac is not read" in out
    assert summary_main(["--corpus", "ravdess", "--root", str(root), "--json", "--min-duration", "0.05"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 9 and summary["dropped_labels"] == {}
    assert summary_main(["--corpus", "ravdess", "--root", str(root), "--drop-labels", "joy"]) == 2
    assert capsys.readouterr().err.startswith("error: drop_labels: unknown class 'joy'")
