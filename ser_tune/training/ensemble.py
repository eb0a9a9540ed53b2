"""A study's model as the average of its best configurations: held-out figures and the exported folder.

With ``evaluation.ensemble: k`` a study refits each run's k best configurations (by the validation
objective, one per configuration) on the run's search speakers, and the run's held-out figure is that
of the mean of their class probabilities on the test speakers (soft voting; ensemble selection from a
search's models, Caruana et al. 2004; auto-sklearn's and AutoGluon's final models). Each refit keeps its
test probabilities (:data:`TEST_PROBABILITIES`, :func:`save_test_probabilities`); :func:`ensemble_scores`
averages them. The exported ensemble is a folder of member model folders and ``ensemble.json``
(:func:`save_ensemble`); ``training.export.load_model`` reads it as an :class:`EnsembleModel`, which
predicts as a tuned model does (frozen members of one encoder share one encode of each clip, whatever
layer each is cut at; a member with trained encoder layers encodes for itself).

    >>> import numpy as np, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> y = np.array([0, 1, 1])
    >>> a = save_test_probabilities(folder / "a", np.array([[.9, .1], [.6, .4], [.2, .8]]), y, ["x", "y", "z"])
    >>> b = save_test_probabilities(folder / "b", np.array([[.8, .2], [.3, .7], [.4, .6]]), y, ["x", "y", "z"])
    >>> ensemble_scores([a, b])["test_bca"]     # the first alone gets clip y wrong; the mean does not
    1.0
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .metrics import bca, class_probabilities_of, confusion

TEST_PROBABILITIES = "test_probabilities.npz"
ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = "ser_tune.ensemble/1"
MEMBERS_DIR = "members"


class EnsembleError(ValueError):
    """Members that cannot be averaged (other clips, other classes) or a bad ensemble folder; names it."""


def save_test_probabilities(folder: str | Path, probabilities: np.ndarray, labels: np.ndarray, clips) -> Path:
    """Write one refit's test class probabilities (clips x classes), the clips' true class indices and
    their paths to ``folder/TEST_PROBABILITIES``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TEST_PROBABILITIES
    np.savez(path, probabilities=np.asarray(probabilities, dtype=np.float64),
             labels=np.asarray(labels, dtype=np.int64), clips=np.asarray([str(c) for c in clips]))
    return path


def read_test_probabilities(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with np.load(path) as data:
            return data["probabilities"], data["labels"], data["clips"]
    except (OSError, KeyError, ValueError) as err:
        raise EnsembleError(f"{path}: not a refit's test probabilities ({err})") from None


def ensemble_scores(paths) -> dict:
    """Test metrics of the mean of the members' class probabilities (files of
    :func:`save_test_probabilities`, all on the same clips): test_bca, test_accuracy, test_confusion."""
    paths = list(paths)
    if not paths:
        raise EnsembleError("an ensemble needs at least one member's test probabilities")
    first, labels, clips = read_test_probabilities(paths[0])
    total = first.copy()
    for path in paths[1:]:
        probabilities, other_labels, other_clips = read_test_probabilities(path)
        if probabilities.shape != first.shape or not np.array_equal(other_clips, clips):
            raise EnsembleError(f"{path}: its test clips or classes differ from {paths[0]}'s; members of one "
                                "ensemble are refit on one fold")
        total += probabilities
    predicted = total.argmax(1)
    return {"test_bca": bca(labels, predicted), "test_accuracy": float((predicted == labels).mean()),
            "test_confusion": json.dumps(confusion(labels, predicted, first.shape[1]))}


def save_ensemble(folder: str | Path, members: list[Path], info: dict) -> Path:
    """An ensemble model folder: each member model folder copied to ``members/<rank>/`` and
    ``ensemble.json`` (format, member folders in rank order, ``info``: e.g. their trials)."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    names = []
    for rank, member in enumerate(members, start=1):
        name = f"{MEMBERS_DIR}/{rank}"
        shutil.copytree(member, folder / name)
        names.append(name)
    (folder / ENSEMBLE_FILE).write_text(json.dumps({"format": ENSEMBLE_FORMAT, "members": names, **info}, indent=2))
    return folder


def is_ensemble(folder: str | Path) -> bool:
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def best_member(folder: str | Path) -> str:
    """The folder, relative to the ensemble's, of its first member: the best configuration alone."""
    return read_listing(Path(folder))["members"][0]


class EnsembleModel:
    """Tuned models that predict together: the mean of their class probabilities. It has a tuned model's
    reading side (labels, sample_rate, max_length, meta: the best member's with ``ensemble`` added,
    predict, predict_many, predict_proba); ``members[0]`` is the best configuration alone."""

    def __init__(self, members: list, info: dict):
        labels = members[0].labels
        for member in members[1:]:
            if member.labels != labels or member.sample_rate != members[0].sample_rate:
                raise EnsembleError(f"ensemble members disagree on their labels or sample rate: {labels} and "
                                    f"{member.labels}")
        if not members[0].n_classes:
            raise EnsembleError("an ensemble averages class probabilities: its members must predict categories")
        self.members = members
        self.meta = {**members[0].meta, "ensemble": info}
        self.shared = share_encodes(members)

    labels = property(lambda self: self.members[0].labels)
    sample_rate = property(lambda self: self.members[0].sample_rate)
    max_length = property(lambda self: self.members[0].max_length)
    n_classes = property(lambda self: self.members[0].n_classes)
    dimensions = property(lambda self: [])

    def probabilities(self, waves: list[np.ndarray], speakers=None) -> np.ndarray:
        """(N, classes): the members' mean class probabilities of waves taken together."""
        total = 0.0
        try:
            for member in self.members:
                total = total + class_probabilities_of(member.outputs(waves, speakers)[:, : member.n_classes])
        finally:
            for embeddings in self.shared:   # keyed by the waves' ids: valid for this call only
                embeddings.clear()
        return total / len(self.members)

    def outputs(self, waves: list[np.ndarray], speakers=None) -> np.ndarray:
        """Log mean probabilities: class scores whose softmax is the members' mean probabilities."""
        return np.log(np.clip(self.probabilities(waves, speakers), 1e-300, None))

    def predict_proba(self, wave: np.ndarray) -> np.ndarray:
        return self.probabilities([wave])[0]

    def predict(self, wave: np.ndarray) -> dict:
        return self.describe(self.probabilities([wave])[0])

    def predict_many(self, waves: list[np.ndarray], speakers=None) -> list[dict]:
        return [self.describe(p) for p in self.probabilities(waves, speakers)]

    def describe(self, probabilities: np.ndarray) -> dict:
        return {"emotion": self.labels[int(probabilities.argmax())],
                "probabilities": {label: float(p) for label, p in zip(self.labels, probabilities)}}


def share_encodes(members: list) -> list[dict]:
    """Members that read pooled statistics of the same frozen weights (one spec, precision, clip length)
    share one encode of each clip, whatever layer each is cut at: the deepest member's encoder runs once
    and every member reads its own first hidden states (a cut encoder's states are the full one's first
    states, ``SpeechEncoder.truncate``). Returns the shared feature stores."""
    groups: dict[tuple, list] = {}
    for member in members:
        if getattr(member, "frozen", False) and not member.reads_frames \
                and member.meta.get("average_frames_from") is None:
            key = (member.meta["encoder"], member.precision, member.max_length, member.sample_rate)
            groups.setdefault(key, []).append(member)
    stores = []
    for group in groups.values():
        if len(group) < 2:
            continue
        deepest = max(group, key=lambda m: m.encoder.num_layers).encoder
        store: dict = {}
        for member in group:
            member.shared_states = member.encoder.num_layers + 1
            member.encoder = deepest
            member.shared_embeddings = store
        stores.append(store)
    return stores


def load_ensemble(folder: str | Path, load_member) -> EnsembleModel:
    """The ensemble in ``folder``; ``load_member(member_folder)`` loads each (``load_model``)."""
    folder = Path(folder)
    info = read_listing(folder)
    return EnsembleModel([load_member(folder / member) for member in info["members"]], info)


def read_listing(folder: Path) -> dict:
    """``ensemble.json`` of ``folder``, checked; an EnsembleError naming the file otherwise."""
    path = folder / ENSEMBLE_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise EnsembleError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(info, dict) or info.get("format") != ENSEMBLE_FORMAT:
        raise EnsembleError(f"{path}: format {info.get('format') if isinstance(info, dict) else None!r}, "
                            f"expected {ENSEMBLE_FORMAT!r}")
    members = info.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise EnsembleError(f"{path}: 'members' must be a non-empty list of member folders")
    return info
