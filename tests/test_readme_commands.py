"""Every command the README shows runs, at tiny scale, and every ``python -m ser_tune.*`` entry point
answers ``--help``.

The commands are parsed out of README.md (its ```bash blocks, and inline `python -m ...` spans), so a
new README command fails ``test_every_readme_command_is_run_or_skipped_for_a_reason`` until it runs
here or joins SKIPPED with its reason. Real data is swapped for tiny stand-ins by SUBSTITUTIONS (each
says what it swaps); the commands run in README order in one folder, so later ones (results, predict,
--resume) read the studies the earlier ones made.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# README commands not run here, by pattern, with where they are tested instead.
SKIPPED = {
    r"pip install -e": "the install: .ci/run runs it (tests/test_readme.py checks CI runs the README's line)",
    r"^python -m pytest": "the test suite itself",
    r"^python -m ser_tune\.active$": "names the command in prose; its uses are in the block below it",
    r"^python -m ser_tune\.launch experiments/emodb\.yaml --json$":
        "runs as `launch CONFIG --json` in tests/test_launch.py::test_every_strategy_spends_exactly_its_budget_and_"
        "honours_a_constraint, which checks that stdout holds the JSON object alone",
    r"^python -m ser_tune\.launch experiments/emodb_nested\.yaml$":
        "its study (2 outer x 2 inner speaker folds, tiny) runs in tests/test_study_repeats.py::test_outer_folds_and_"
        "cross_validated_trials_test_every_speaker_once; the YAML itself loads in tests/test_config.py",
    r"^python -m ser_tune\.launch experiments/emodb\.yaml --ray-verbose 1$":
        "runs as `launch CONFIG --resume STUDY --ray-verbose 1` in tests/test_study_interrupt.py, which checks Ray "
        "Tune's tables",
    r"^python -m ser_tune\.launch experiments/csv_example\.yaml$":
        "its tiny stand-in (the README's my_corpus/manifest.csv, tiny-whisper) is the study `launch "
        "experiments/emodb.yaml` runs here; the file itself loads in tests/test_readme_own_corpus.py",
    r"^python -m ser_tune\.active CONFIG --storage DIR --cpus-per-trial 1$":
        "runs as `active CONFIG --storage DIR --cpus-per-trial 1` in tests/test_active_cli.py::test_killed_active_"
        "study_resumes_keeping_finished_trials",
    r"^python -m ser_tune\.launch experiments/emodb\.yaml --strategies tpe gp --trials 15 --cpus-per-trial 1$":
        "runs as `launch CONFIG --strategies tpe random --trials 4 --cpus-per-trial 1` in tests/test_launch.py::"
        "test_killed_study_resumes_to_the_full_budget",
    r"--cv-folds 4 --repeats 10$": "in tests/test_study_repeats.py: `--repeats 2` (test_repeats_differ_by_seed_...) "
                                   "and `--cv-folds 2` (test_outer_folds_and_cross_validated_trials_...)",
    r"^python -m ser_tune\.active experiments/active_quickstart\.yaml$":
        "runs as shown (with --json and a tmp --storage) in tests/test_active_cli.py::test_quickstart_end_to_end",
    r"^python -c \"import secrets": "writes the cluster token into cluster/secrets (tests/test_cluster_compose.py)",
    r"^docker compose": "needs Docker (compose file and image: tests/test_cluster_compose.py)",
    r"^export RAY_AUTH_MODE": "the cluster's token for `ray job` (tests/test_cluster_jobs.py)",
    r"^ray job ": "needs the compose cluster (job submit/logs/stop on a local head: tests/test_cluster_jobs.py)",
    r"^optuna-dashboard ": "serves a study's optuna.db (tests/test_study_optuna.py starts it on 127.0.0.1, reads /api/studies)",
    r"^curl ": "the compose cluster's dashboard (token auth: tests/test_cluster_jobs.py)",
}

# (README text, its tiny stand-in, why). Applied in order to every command that is run;
# {names} are filled in from the tiny folder (see ``places``) when the command runs.
SUBSTITUTIONS = [
    (r"^python -m ser_tune\.launch$", "python -m ser_tune.launch --trials 1 --strategies tpe",
     "the quickstart (~2 min): one tpe trial of its synthetic corpus and tiny-whisper"),
    ("experiments/emodb.yaml", "{tiny}",
     "EmoDB + Whisper-base: the README's manifest of the synthetic corpus + tiny-whisper, a trial of nsga2 on "
     "val_bca and latency"),
    ("studies/emodb-20261122-101500 [more study folders]", "{study} [{other_study}]", "the tiny studies"),
    ("studies/emodb-.../best_model clip1.wav clip2.wav", "{study}/best_model {clip} {clip2}",
     "the tiny study's model, two synthetic clips"),
    ("studies/emodb-.../best_model clip1.wav --labels", "{study}/best_model {clip} --labels",
     "the tiny study's model, one synthetic clip"),
    ("studies/emodb_deploy-.../front --max-latency 20 clip.wav", "{study}/front --max-latency 1000 {clip}",
     "the tiny study's front (its latency on a busy test machine can pass 20 ms/s)"),
    ("--corpus emodb --root ../shared/data/emodb --encoder hf:../shared/models/whisper-base-encoder",
     "--corpus synthetic --root {corpus} --encoder tiny-whisper", "synthetic corpus, tiny-whisper"),
    ("--corpus ravdess --root /data/RAVDESS", "--corpus synthetic --root {corpus}", "the synthetic corpus"),
    ("experiments/twostage.yaml", "{twostage}", "two small synthetic corpora, one epoch a stage"),
    ("experiments/active_emodb.yaml", "{active}", "EmoDB: the tiny active study"),
    ("CONFIG", "{active}", "the tiny active study"),
    ("--encoder hf:FOLDER --corpus emodb --root DIR --out DIR --exclude-speakers 12 13",
     "--encoder hf:{wav2vec2} --corpus synthetic --root {corpus} --out {tapt} --exclude-speakers 21 22 --steps 2",
     "a saved tiny wav2vec2, the synthetic corpus and two of its speakers, 2 TAPT steps"),
]


def readme_commands() -> list[str]:
    """Every command in README.md, in order: each line of a ```bash block (continuations joined,
    comments dropped) and each inline `python -m ...` span."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    commands += [" ".join(span.split()) for span in re.findall(r"`(python -m [^`]+)`", text)]
    return commands


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIPPED.items() if re.search(pattern, command)), None)


def substituted(command: str) -> str:
    for readme, tiny, _why in SUBSTITUTIONS:
        command = re.sub(readme, tiny, command) if readme.startswith("^") else command.replace(readme, tiny)
    return command


def runs(command: str) -> list[str]:
    """A command with [optional] parts runs twice: without them, then with all of them."""
    if "[" not in command:
        return [command]
    return [re.sub(r"\s*\[[^\]]*\]", "", command), command.replace("[", "").replace("]", "")]


def test_every_readme_command_is_run_or_skipped_for_a_reason():
    commands = readme_commands()
    assert any("ser_tune.train" in c for c in commands) and any("ser_tune.predict" in c for c in commands)
    for command in commands:
        if skip_reason(command) is None:
            assert command.startswith("python -m ser_tune"), f"a README command this test cannot run: {command}"
            assert not re.search(r"\.\./shared|/data/|emodb|ravdess|\bDIR\b|FOLDER|\.\.\.",
                                 substituted(command).replace("experiments/", "")), \
                f"needs real data; add a substitution: {command}"
    for pattern in SKIPPED:   # a stale skip hides nothing
        assert any(re.search(pattern, c) for c in commands), f"SKIPPED names no README command: {pattern}"
    for readme, _tiny, _why in SUBSTITUTIONS:
        assert any(re.search(readme, c) if readme.startswith("^") else readme in c for c in commands), \
            f"a substitution for text the README no longer has: {readme}"


def _entry_points() -> list[str]:
    """Every ``python -m ser_tune...`` module: packages with a __main__.py, modules with a main guard."""
    names = []
    for path in sorted((REPO / "ser_tune").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if path.name == "__main__.py":
            names.append(module.rsplit(".", 1)[0])
        elif re.search(r"^if __name__ == .__main__.:", path.read_text(), re.M):
            names.append(module)
    return names


def test_entry_points_are_found():
    assert {"ser_tune.launch", "ser_tune.train", "ser_tune.predict", "ser_tune.results", "ser_tune.data",
            "ser_tune.active", "ser_tune.active.tapt", "ser_tune.adapt", "ser_tune.crosscorpus"} <= set(_entry_points())


@pytest.mark.parametrize("module", _entry_points())
def test_every_entry_point_answers_help(module, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as end:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert end.value.code in (0, None), out.getvalue()
    assert out.getvalue().startswith("usage:"), out.getvalue()


# -- the commands themselves ----------------------------------------------------------------------

def _write(path: Path, raw: dict) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _manifest(corpus: Path, folder: Path) -> str:
    """The README's manifest.csv for the synthetic corpus: path (relative to the manifest), label, speaker."""
    from ser_tune.data import load_corpus

    table = load_corpus("synthetic", corpus, clips_per_cell=2).table
    folder.mkdir()
    rows = table.assign(path=[os.path.relpath(p, folder) for p in table["path"]])[["path", "label", "speaker"]]
    rows.to_csv(folder / "manifest.csv", index=False)
    return str(folder / "manifest.csv")


def _tiny_folder(root: Path) -> dict:
    """The tiny experiments and folders the substitutions name."""
    from ser_tune.data.synthetic import generate_synthetic
    from ser_tune.encoders.tiny import build_tiny_model
    from transformers import Wav2Vec2FeatureExtractor

    corpus, studies = root / "corpus", root / "studies"
    generate_synthetic(corpus, clips_per_cell=2)   # every command that names {corpus} reads this one
    common = {"corpus": {"name": "synthetic", "root": str(corpus), "options": {"clips_per_cell": 2}},
              "split": {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0},
              "resources": {"cpus_per_trial": 1}, "storage": str(studies)}
    study = {**common, "encoder": "tiny-whisper", "trial": {"unfreeze": "none", "max_length": 1.0, "batch_size": 16},
             "space": {"lr": {"loguniform": [1e-3, 3e-2]}, "num_epochs": {"int": [1, 2]}}, "budget": {"trials": 1},
             "concurrency": 1}   # one trial worker per search run: each costs seconds of imports
    manifest = _manifest(corpus, root / "my_corpus")
    wav2vec2 = root / "tiny-wav2vec2"
    build_tiny_model("wav2vec2").save_pretrained(wav2vec2)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(wav2vec2)
    small = {"name": "synthetic", "root": None, "options": {"clips_per_cell": 2}}
    one_epoch = {"unfreeze": "none", "lr": 3e-3, "num_epochs": 1, "max_length": 1.0, "batch_size": 16}
    return {
        "corpus": str(corpus), "studies": str(studies), "tapt": str(root / "tapt"), "wav2vec2": str(wav2vec2),
        "tiny": _write(root / "tiny.yaml", {   # a CSV manifest: the README's csv_example.yaml is not run again
            **study, "name": "tiny", "corpus": {"name": "csv", "root": manifest}, "strategies": ["nsga2"],
            "objective": {"metrics": {"val_bca": "max", "latency_ms_per_s": "min"},
                          "latency": {"clips": 2, "repeats": 1, "warmup": 0}}}),
        "twostage": _write(root / "tiny_twostage.yaml", {
            "name": "tiny_twostage", "encoder": "tiny-whisper", "storage": str(studies),
            "source": {"corpus": {**small, "options": {"clips_per_cell": 2, "seed": 0}}},
            "target": {"corpus": {**small, "options": {"clips_per_cell": 2, "seed": 1, "n_speakers": 6}},
                       "split": {"kind": "speaker", "val_speakers": 1, "test_speakers": 2, "seed": 0}},
            "stage1": {"trial": {**one_epoch, "peft": "lora", "lora_rank": 2, "unfreeze": "top:1"}},
            "stage2": {"trial": {"num_epochs": 1}}, "baseline": False}),
        "active": _write(root / "tiny_active.yaml", {
            **common, "name": "tiny_active", "encoder": "tiny-wav2vec2", "trial": one_epoch,
            "active": {"cold_start": "random", "fractions": [0.5, 1.0], "acquisitions": ["entropy"],
                       "tapt": [False], "seeds": [0], "full_reference": False}}),
    }


def places(tiny: dict) -> dict:
    """The tiny folder's names, with what earlier commands made: the first and the latest tiny study, clips."""
    studies = sorted(Path(tiny["studies"]).glob("tiny-*"), key=lambda p: p.stat().st_mtime)
    clips = sorted(Path(tiny["corpus"]).rglob("*.wav"))
    return {**tiny, "study": studies[0] if studies else "NO-STUDY", "other_study": studies[-1] if studies else "",
            "clip": clips[0] if clips else "NO-CLIP", "clip2": clips[-1] if clips else "NO-CLIP"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """One tiny folder for the whole module: the commands run in README order (one test each, as
    parametrized), so results, predict and --resume find the studies the launches before them made."""
    return _tiny_folder(tmp_path_factory.mktemp("readme"))


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in readme_commands() if not skip_reason(c)])
def test_readme_command_runs_at_tiny_scale(command, tiny):
    for run in runs(substituted(command)):
        argv = [sys.executable if a == "python" else a for a in shlex.split(run.format(**places(tiny)))]
        done = subprocess.run(argv, cwd=Path(tiny["corpus"]).parent, text=True, capture_output=True, timeout=800)
        assert done.returncode == 0, f"ran: {shlex.join(argv)}\nexit {done.returncode}: {done.stderr[-3000:]}"
        if "--json" in argv:
            json.loads(done.stdout)   # stdout holds the one JSON object
