"""README "Your own corpus": its manifest, its check command and its experiment work as shown."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from fixtures_corpora import write_wav
from ser_tune.config import experiment_from_dict, load_experiment
from ser_tune.data import load_corpus

REPO = Path(__file__).resolve().parents[1]


def _section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("### Your own corpus: a CSV manifest", 1)[1].split("\n## ", 1)[0]


def _block(section: str, language: str, index: int = 0) -> str:
    return section.split(f"```{language}\n")[index + 1].split("```", 1)[0]


def _readme_corpus(tmp_path: Path) -> Path:
    """The README's manifest, verbatim, beside a tone for every path it names."""
    manifest = _block(_section(), "csv")
    root = tmp_path / "my_corpus"
    for i, line in enumerate(manifest.strip().splitlines()[1:]):
        write_wav(root / line.split(",")[0], freq=200 + 40 * i)
    (root / "manifest.csv").write_text(manifest)
    return root


def test_the_readmes_check_command_reads_the_readmes_manifest(tmp_path):
    _readme_corpus(tmp_path)
    command = _block(_section(), "bash").strip()
    assert command == "python -m ser_tune.data --corpus csv --root my_corpus/manifest.csv"
    run = subprocess.run([sys.executable, *command.split()[1:]], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)})
    assert run.returncode == 0, run.stderr
    assert "files: 3   speakers: 2" in run.stdout and "skipped: 0" in run.stdout
    assert "anger" in run.stdout and "happiness" in run.stdout


def test_paths_are_relative_to_the_manifest_and_root_may_be_its_folder(tmp_path):
    root = _readme_corpus(tmp_path)
    for given in (root / "manifest.csv", root):
        corpus = load_corpus("csv", given)
        assert sorted(Path(p).relative_to(root.resolve()).as_posix() for p in corpus.table["path"]) == \
            ["spk01/angry_01.wav", "spk01/happy_01.wav", "spk02/happy_01.wav"]


def _with_tiny_encoder(raw: dict) -> dict:
    """``raw`` with a built-in encoder: the corpus is what is read here, and the encoder folder the README names
    (../shared/models/...) is not on every clone (config checks it exists)."""
    assert raw["encoder"].startswith("hf:"), raw["encoder"]
    return {**raw, "encoder": "tiny-whisper"}


def test_the_readmes_experiment_and_the_example_file_name_the_csv_corpus(tmp_path):
    raw = _with_tiny_encoder(yaml.safe_load(_block(_section(), "yaml")))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    root = _readme_corpus(tmp_path)
    exp = load_experiment(tmp_path / "exp.yaml")       # a relative root: next to the YAML first
    assert exp.corpus.name == "csv" and exp.corpus.root == root / "manifest.csv"
    path = REPO / "experiments" / "csv_example.yaml"
    example = experiment_from_dict(_with_tiny_encoder(yaml.safe_load(path.read_text())), source=path)
    assert example.corpus.name == "csv" and example.corpus.root.name == "manifest.csv"
    assert experiment_from_dict({**raw, "corpus": {"name": "csv", "root": str(root)}}).corpus.root == root
