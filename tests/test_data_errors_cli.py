"""Bad inputs give one clear message naming the file or folder; the CLI exits 2 with an error: line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ser_tune.data import CorpusError, check_root, load_corpus
from ser_tune.data.__main__ import main
from fixtures_corpora import make_emodb, write_bad_files, write_wav
from test_data_audio import BAD, REASONS


def test_missing_folder(tmp_path):
    for name in ("emodb", "ravdess", "cremad", "iemocap", "csv"):
        with pytest.raises(CorpusError, match=str(tmp_path / "absent")):
            load_corpus(name, tmp_path / "absent")


def test_a_root_that_is_not_there_is_the_loader_s_own_error_before_any_reading(tmp_path):
    """check_root (a study's check before its heavy imports) says what load_corpus would, word for word."""
    (tmp_path / "a.wav").write_bytes(b"")
    for name in ("emodb", "ravdess", "cremad", "iemocap", "csv"):
        for root in (tmp_path / "absent", tmp_path / "a.wav"):
            try:
                load_corpus(name, root)
            except CorpusError as exc:
                if "not found" in str(exc) or "not a folder" in str(exc):
                    with pytest.raises(CorpusError) as checked:
                        check_root(name, root)
                    assert str(checked.value) == str(exc)
                    continue
            check_root(name, root)   # anything else is for the loader to find
    check_root("emodb", tmp_path)    # a folder that is there
    check_root("synthetic", None)
    with pytest.raises(CorpusError, match="root: no folder given for corpus 'ravdess'"):
        check_root("ravdess", None)


def test_folder_without_files_of_that_corpus(tmp_path):
    write_wav(tmp_path / "hello.wav")
    with pytest.raises(CorpusError, match=rf"{tmp_path}: no EmoDB files found \(1 .wav files"):
        load_corpus("emodb", tmp_path)
    with pytest.raises(CorpusError, match="no CREMA-D files found"):
        load_corpus("cremad", tmp_path)
    with pytest.raises(CorpusError, match=rf"{tmp_path}: no manifest.csv"):
        load_corpus("csv", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="0 .wav files"):
        load_corpus("ravdess", tmp_path / "empty")


def test_bad_files_are_skipped_with_reasons(tmp_path):
    make_emodb(tmp_path)
    names = {"garbage": "11a01Wa.wav", "empty": "11a01Ta.wav", "zero_length": "12a01Wa.wav",
             "silent": "12a01Ta.wav", "nan": "13a01Wa.wav"}
    paths = write_bad_files(tmp_path / "wav", names)
    corpus = load_corpus("emodb", tmp_path)
    reasons = {s["path"]: s["reason"] for s in corpus.skipped}
    for kind, path in paths.items():
        assert REASONS[kind] in reasons[str(path)], kind
    assert len(corpus.table) == 8 and not set(map(str, paths.values())) & set(corpus.table["path"])


def test_nothing_usable_left(tmp_path):
    write_bad_files(tmp_path, {"silent": "03a01Wa.wav", "empty": "03a01Ta.wav"})
    with pytest.raises(CorpusError, match=rf"{tmp_path}: no usable emodb clips left \(2 files skipped"):
        load_corpus("emodb", tmp_path)


def test_only_unknown_codes_left(tmp_path):
    write_wav(tmp_path / "03a01Xa.wav")
    with pytest.raises(CorpusError, match="unknown EmoDB emotion letter 'X'"):
        load_corpus("emodb", tmp_path)


def test_cli_text_summary(tmp_path, capsys):
    make_emodb(tmp_path)
    assert main(["--corpus", "emodb", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "files: 8" in out and "speakers: 4" in out and "fear" in out
    assert "sample rates: 16000 Hz" in out and "skipped: 2" in out
    assert "03a01Xa.wav: unknown EmoDB emotion letter 'X'" in out


def test_cli_json(tmp_path, capsys):
    make_emodb(tmp_path)
    assert main(["--corpus", "emodb", "--root", str(tmp_path), "--json", "--label-map", "iemocap4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 5 and summary["speakers"] == 4
    assert summary["labels"] == {"anger": 2, "happiness": 1, "neutral": 1, "sadness": 1}
    assert all({"path", "reason"} <= set(s) for s in summary["skipped"]) and len(summary["skipped"]) == 5


def test_cli_synthetic_says_so(tmp_path, capsys):
    assert main(["--corpus", "synthetic", "--root", str(tmp_path / "s"), "--seed", "3"]) == 0
    assert "synthetic stand-in" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["--corpus", "emodb", "--root", "MISSING"], "MISSING: EmoDB folder not found"),
    (["--corpus", "emodb", "--root", "EMPTY"], "no EmoDB files found"),
    (["--corpus", "emodb", "--root", "BAD", "--label-map", "nope"], "unknown view 'nope'"),
    (["--corpus", "timit", "--root", "BAD"], "invalid choice"),
    (["--corpus", "emodb", "--root", "BAD", "--seed", "1"], "--seed applies to --corpus synthetic only"),
])
def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "EMPTY").mkdir()
    make_emodb(tmp_path / "BAD")
    argv = [str(tmp_path / a) if a in ("MISSING", "EMPTY", "BAD") else a for a in argv]
    with pytest.raises(SystemExit) if "timit" in argv else _nullcontext() as raised:
        code = main(argv)
    code = raised.value.code if "timit" in argv else code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and needle in err and err.count("\n") == 1


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_cli_subprocess_bad_file_no_traceback(tmp_path):
    write_bad_files(tmp_path, {"garbage": "03a01Wa.wav"})
    proc = subprocess.run([sys.executable, "-m", "ser_tune.data", "--corpus", "emodb", "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert str(tmp_path / "03a01Wa.wav") in proc.stderr and "unreadable audio" in proc.stderr
    assert proc.stdout == ""
