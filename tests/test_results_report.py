"""write_report, the plots and the CLI on hand-made study folders (see test_results_study)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from ser_tune.results import compare, load_study, summary_json, write_report
from ser_tune.results.plots import plot_hyperparameters
from ser_tune.results.report import render_report
from ser_tune.results.__main__ import main
from test_results_study import make_study

PLOTS = ("best_vs_time.png", "best_vs_trials.png", "hyperparameters.png", "confusion.png")
REPO = Path(__file__).resolve().parents[1]


def _assert_real_image(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    flat = pixels.reshape(-1, pixels.shape[-1])
    assert not np.all(flat == flat[0]), f"{path.name} is one colour"


@pytest.fixture(scope="module")
def default_report(tmp_path_factory) -> Path:
    """One full report of the default fake study, shared because plotting takes seconds."""
    return write_report(make_study(tmp_path_factory.mktemp("default")))


def test_report_plots_and_summary_written_into_the_study(default_report):
    folder = default_report.parent
    report = default_report
    assert report == folder / "report.md"
    for name in PLOTS:
        _assert_real_image(folder / "plots" / name)
    text = report.read_text()
    assert text.startswith("# ser_tune study: fake")
    for name in PLOTS:
        assert f"](plots/{name})" in text
    assert "Plot skipped" not in text
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["studies"][0]["strategies"]["tpe"]["best_val_bca"] == pytest.approx(0.93)


def test_report_content(default_report):
    text = default_report.read_text()
    assert "SYNTHETIC" not in text and "SPEAKER-DEPENDENT" not in text
    assert "emodb" in text and "whisper-base" in text and "testhost, 2 CPUs, 1 node(s)" in text
    assert "test speakers: 12" in text and "val speakers: 11" in text
    assert "1 random warm-up trial," in text and "TPE (hyperopt)" in text
    # Censored cell: random never reaches 0.9 (4 trials started, 300 s wall-clock).
    assert "not reached in 4 trials / 5.0 min" in text
    # random reaches 0.8 at 130 s, 180 s with the shared encode, 190 s of trial time, in 2 trials.
    assert "| random | 0.8 | 130.0 s (2.2 min) | 180.0 s (3.0 min) | 190.0 s (3.2 min) | 2 |" in text
    assert "| tpe | done | 2 | 0 | 0.930 | lr=0.0004, num_epochs=2 | 0.900 |" in text
    assert "| random | done | 3 | 1 | 0.850 | lr=0.0003, num_epochs=3 | 0.800 |" in text
    words = " ".join(text.split())
    assert "trial time summed, model loading excluded" in words and "Ray overhead" in words
    best = text.split("## Best configuration")[1]
    assert "strategy `tpe`, trial `00001`" in best and "Test metric (test_bca) on the test speakers: 0.900" in best


def test_report_flags_synthetic_and_speaker_dependent(tmp_path):
    # The text alone (plots are checked above): render without drawing.
    studies = [load_study(make_study(tmp_path, synthetic=True, speaker_dependent=True))]
    text = render_report(studies, compare(studies), [], tmp_path)
    assert "SYNTHETIC stand-in corpus: figures are not comparable to real corpora" in text
    assert "SPEAKER-DEPENDENT split" in text and "test BCA is optimistic" in text


def test_absent_data_skips_plots_and_says_so(tmp_path):
    folder = make_study(tmp_path, confusion=False, epochs=False)
    (folder / "plots").mkdir()
    (folder / "plots" / "confusion.png").write_bytes(b"stale")
    text = write_report(folder).read_text()
    assert not (folder / "plots" / "confusion.png").exists()
    assert not (folder / "plots" / "best_vs_time.png").exists()
    assert "Plot skipped: the best trial has no test_confusion in trials.csv." in text
    assert "Plot skipped: no epoch reports" in text
    _assert_real_image(folder / "plots" / "best_vs_trials.png")
    # Without epoch reports no threshold can be reached: all censored.
    assert text.count("not reached in 4 trials / 5.0 min") == 2
    assert text.count("not reached in 2 trials / 3.3 min") == 2


def test_two_studies_in_one_report(tmp_path):
    first = make_study(tmp_path, "first")
    second = make_study(tmp_path, "second", synthetic=True, speaker_dependent=True)
    out = tmp_path / "both"
    report = write_report(first, others=[second], out_dir=out)
    assert report == out / "report.md"
    text = report.read_text()
    assert text.startswith("# ser_tune comparison: first, second")
    assert "| Study | Strategy |" in text
    assert "| first | random | done |" in text and "| second | tpe | done |" in text
    assert "## Setup: first" in text and "## Setup: second" in text
    assert text.count("SYNTHETIC") == 1 and text.count("SPEAKER-DEPENDENT") == 1
    for name in PLOTS:
        _assert_real_image(out / "plots" / name)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["studies"]] == ["first", "second"]


def test_cli_json_in_process(tmp_path, capsys):
    folder = make_study(tmp_path)
    assert main([str(folder), "--json", "--threshold", "0.85"]) == 0
    summary = json.loads(capsys.readouterr().out)
    random = summary["studies"][0]["strategies"]["random"]
    assert random["seconds_to"] == {"0.85": pytest.approx(130.0)}
    assert summary["studies"][0]["strategies"]["tpe"]["trials_to"] == {"0.85": 1}
    assert not (folder / "report.md").exists()      # --json writes nothing


def test_cli_writes_the_report_to_out(tmp_path, capsys):
    folder = make_study(tmp_path, confusion=False)
    out = tmp_path / "out"
    assert main([str(folder), "--out", str(out), "--threshold", "0.9"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"report: {out / 'report.md'}"
    # the comparison it wrote, as the launcher prints it: tpe's best 0.930, its test 0.900, 0.9 reached at 130 s
    assert "strategy comparison" in "\n".join(printed)
    tpe = next(line for line in printed if line.startswith("tpe "))
    assert tpe.split()[1:5] == ["1", "2", "0.930", "0.900"] and tpe.endswith("130.0 s")
    text = (out / "report.md").read_text()
    assert "| tpe | 0.9 | 130.0 s (2.2 min) |" in text and "| 0.8 |" not in text
    assert (out / "summary.json").is_file() and not (folder / "report.md").exists()


def test_cli_bad_folder_exits_with_a_message(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_module_compares_two_studies(tmp_path):
    first, second = make_study(tmp_path, "first"), make_study(tmp_path, "second")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-m", "ser_tune.results", str(first), str(second),
                             "--json"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [s["name"] for s in summary["studies"]] == ["first", "second"]
    assert summary["studies"][1]["strategies"]["random"]["seconds_to"] == {"0.8": 130.0, "0.9": None}


def test_text_settings_become_categories(tmp_path):
    folder = make_study(tmp_path)
    trials = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
    trials["cfg_unfreeze"] = ["top:2", "all", "none", "top:2", "all", "top:2"]
    trials["cfg_class_weighted"] = ["True", "False", "True", "True", "False", "True"]
    trials.to_csv(folder / "trials.csv", index=False)
    study = load_study(folder)
    plot = plot_hyperparameters([study], tmp_path / "plots")
    _assert_real_image(plot.path)
    text = render_report([study], compare([study]), [plot], tmp_path)
    assert "lr=0.0004, num_epochs=2, unfreeze=top:2, class_weighted=True" in text
    summary = summary_json([study])
    assert summary["studies"][0]["strategies"]["random"]["best_config"] == {
        "lr": 3e-4, "num_epochs": 3, "unfreeze": "all", "class_weighted": False}
