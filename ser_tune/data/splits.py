"""Train/val/test splits of a corpus table: speaker-independent (default), random, or speaker folds.

A Split assigns every table row to "train", "val" or "test"; it is saved by clip path so that a
study reproduces on the same files.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

PARTS = ("train", "val", "test")
KINDS = ("speaker", "random", "fold")
_CANDIDATES = 256      # random speaker assignments scored per speaker split
_TOLERANCE = 0.02      # assignments scoring within this of the best count as equally good
_NO_TRAINING_CLASS = 100.0   # score of a class left without training clips: worse than any imbalance


@dataclass
class Split:
    kind: str                    # "speaker" | "random" | "fold"
    assignment: pd.Series        # index = table index, values in {"train", "val", "test"}
    seed: int
    speaker_dependent: bool      # True only for kind == "random"; reports must name it
    params: dict = field(default_factory=dict)   # the make_split spec that rebuilds this split

    def _rows(self, table: pd.DataFrame, name: str) -> pd.Index:
        if name not in PARTS:
            raise DataError(f"split part: unknown part '{name}' (parts: {', '.join(PARTS)})")
        if not self.assignment.index.equals(table.index):
            raise DataError("split: its index does not match the table's (was it made from another table?)")
        return self.assignment.index[self.assignment.to_numpy() == name]

    def part(self, table: pd.DataFrame, name: str) -> pd.DataFrame:
        return table.loc[self._rows(table, name)]

    def speakers(self, table: pd.DataFrame, name: str) -> list[str]:
        return sorted(table.loc[self._rows(table, name), "speaker"].astype(str).unique().tolist())

    def counts(self) -> dict[str, int]:
        return {p: int((self.assignment == p).sum()) for p in PARTS}

    def spec(self) -> dict:
        return {"kind": self.kind, **self.params}

    def to_dict(self, table: pd.DataFrame) -> dict:
        _need_columns(table, ("path", "speaker"))
        return {"kind": self.kind, "seed": int(self.seed), "speaker_dependent": bool(self.speaker_dependent),
                "spec": self.spec(), "counts": self.counts(),
                "speakers": {p: self.speakers(table, p) for p in PARTS},
                "parts": {p: table.loc[self._rows(table, p), "path"].astype(str).tolist() for p in PARTS}}

    @classmethod
    def from_dict(cls, d: dict, table: pd.DataFrame) -> "Split":
        for key in ("kind", "seed", "speaker_dependent", "parts"):
            if key not in d:
                raise DataError(f"split: missing field '{key}'")
        if d["kind"] not in KINDS:
            raise DataError(f"split.kind: unknown kind '{d['kind']}' (kinds: {', '.join(KINDS)})")
        _need_columns(table, ("path",))
        part_of = {}
        for part, paths in d["parts"].items():
            if part not in PARTS:
                raise DataError(f"split.parts: unknown part '{part}'")
            part_of.update((str(p), part) for p in paths)
        assignment = table["path"].astype(str).map(part_of)
        if assignment.isna().any() or len(part_of) != len(table):
            # The data may have moved: fall back to file names when they identify clips uniquely.
            names = table["path"].map(lambda p: Path(p).name)
            by_name = {Path(p).name: part for p, part in part_of.items()}
            if names.is_unique and len(by_name) == len(part_of):
                assignment = names.map(by_name)
        missing = table.loc[assignment.isna(), "path"]
        if len(missing):
            raise DataError(f"split: {len(missing)} clips of the table are not in the saved split "
                            f"(e.g. {missing.iloc[0]})")
        if len(part_of) != len(table):
            raise DataError(f"split: the saved split has {len(part_of)} clips, the table {len(table)}")
        return cls(kind=d["kind"], assignment=assignment.astype(object).rename("part"),
                   seed=int(d["seed"]), speaker_dependent=bool(d["speaker_dependent"]),
                   params={k: v for k, v in d.get("spec", {}).items() if k != "kind"})

    def save(self, path, table: pd.DataFrame) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(table), indent=1) + "\n")

    @classmethod
    def load(cls, path, table: pd.DataFrame) -> "Split":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: split file not found") from None
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable split file ({err})") from None
        try:
            return cls.from_dict(d, table)
        except DataError as err:
            raise DataError(f"{path}: {err}") from None


def _need_columns(table: pd.DataFrame, columns) -> None:
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"table: expected a pandas DataFrame, got {type(table).__name__}")
    for column in columns:
        if column not in table.columns:
            raise DataError(f"table: missing column '{column}'")
    if table.empty:
        raise DataError("table: no clips to split")


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed: must be a non-negative integer, got {seed!r}")
    return int(seed)


def _speaker_count(value, n_speakers: int, name: str) -> int:
    """An int is a number of speakers, a float in (0, 1) a fraction of them (at least 1)."""
    if isinstance(value, bool):
        raise DataError(f"{name}: must be an int (speakers) or a float fraction, got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value < 1:
            raise DataError(f"{name}: must be >= 1 speaker, got {value}")
        return int(value)
    if isinstance(value, float) and 0 < value < 1:
        return max(1, int(round(value * n_speakers)))
    raise DataError(f"{name}: must be an int >= 1 or a fraction in (0, 1), got {value!r}")


def _assignment(table: pd.DataFrame, speaker_part: dict[str, str]) -> pd.Series:
    return table["speaker"].astype(str).map(speaker_part).astype(object).rename("part")


def _speaker_genders(table: pd.DataFrame, speakers: list[str]) -> np.ndarray | None:
    """1.0 female / 0.0 male / NaN unknown per speaker; None when gender cannot guide the split."""
    if "gender" not in table.columns:
        return None
    first = table.assign(speaker=table["speaker"].astype(str)).drop_duplicates("speaker").set_index("speaker")
    g = first.loc[speakers, "gender"].map({"f": 1.0, "m": 0.0}).astype(float).to_numpy()
    known = g[~np.isnan(g)]
    return g if known.size and 0 < known.mean() < 1 else None


def _score(parts: dict[str, np.ndarray], counts: np.ndarray, genders: np.ndarray | None) -> float:
    """Lower is better. First every class keeps training clips: a class absent from the train part,
    or held entirely by one held-out part (a fold's training pool then lacks it), costs
    _NO_TRAINING_CLASS. Then label distributions close to the whole table's, genders balanced."""
    total = counts.sum(axis=0)
    overall = total / total.sum()
    score = 0.0
    if "train" in parts:
        score += _NO_TRAINING_CLASS * np.count_nonzero((counts[parts["train"]].sum(axis=0) == 0) & (total > 0))
    for name, members in parts.items():
        if members.size == 0:
            continue
        c = counts[members].sum(axis=0)
        if name != "train":
            score += _NO_TRAINING_CLASS * np.count_nonzero((c == total) & (total > 0))
        weight = 0.5 if name == "train" else 1.0
        score += weight * 0.5 * np.abs(c / max(c.sum(), 1) - overall).sum()
        if name != "train":
            score += 0.5 * np.count_nonzero((c == 0) & (overall > 0))   # a label missing from a part
            if genders is not None:
                g = genders[members]
                g = g[~np.isnan(g)]
                ideal = g.size * np.nanmean(genders)
                score += max(0.0, abs(g.sum() - ideal) - 0.5)
    return score


def _speaker_counts(table: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Sorted speakers, their (speakers x labels) clip counts and genders (see _speaker_genders)."""
    speakers = sorted(table["speaker"].astype(str).unique().tolist())
    labels = sorted(table["label"].astype(str).unique().tolist())
    counts = (pd.crosstab(table["speaker"].astype(str), table["label"].astype(str))
              .reindex(index=speakers, columns=labels, fill_value=0).to_numpy(dtype=float))
    return speakers, counts, _speaker_genders(table, speakers)


def _best_candidate(candidates: list[dict[str, np.ndarray]], counts: np.ndarray, genders,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A seeded pick among the candidates scoring within _TOLERANCE of the best."""
    scores = np.array([_score(parts, counts, genders) for parts in candidates])
    good = np.flatnonzero(scores <= scores.min() + _TOLERANCE)
    return candidates[int(good[rng.integers(good.size)])]


def _pick_speakers(table: pd.DataFrame, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, str]:
    """speaker -> part: sizes[part] speakers for each held-out part (drawn in sizes' order), the rest train.

    Scores _CANDIDATES seeded random speaker assignments by how far each part's label distribution
    is from the whole table's, plus gender imbalance, and picks (seeded) among the best ones.
    """
    speakers, counts, genders = _speaker_counts(table)
    bounds = np.cumsum(list(sizes.values()))   # a permutation cut into the held-out parts, the rest train
    candidates = [dict(zip([*sizes, "train"], map(np.sort, np.split(rng.permutation(len(speakers)), bounds))))
                  for _ in range(_CANDIDATES)]
    chosen = _best_candidate(candidates, counts, genders, rng)
    return {speakers[i]: name for name, members in chosen.items() for i in members}


def speaker_split(table: pd.DataFrame, *, val_speakers: int | float = 0.2, test_speakers: int | float = 0.2,
                  seed: int = 0) -> Split:
    """Disjoint speakers in train / val / test, stratified by label (and gender) as far as speakers allow.

    See _pick_speakers for how the speakers are chosen.
    """
    _need_columns(table, ("speaker", "label"))
    seed = _seed(seed)
    n = table["speaker"].astype(str).nunique()
    n_val = _speaker_count(val_speakers, n, "val_speakers")
    n_test = _speaker_count(test_speakers, n, "test_speakers")
    if n_val + n_test > n - 1:
        raise DataError(f"speaker split: {n} speakers cannot give {n_val} val + {n_test} test speakers "
                        f"and still leave one for training")
    speaker_part = _pick_speakers(table, {"test": n_test, "val": n_val}, np.random.default_rng(seed))
    return Split(kind="speaker", assignment=_assignment(table, speaker_part), seed=seed,
                 speaker_dependent=False,
                 params={"val_speakers": val_speakers, "test_speakers": test_speakers, "seed": seed})


def random_split(table: pd.DataFrame, *, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0) -> Split:
    """Clip-level split stratified by label: speakers appear in several parts (speaker-dependent)."""
    _need_columns(table, ("label",))
    seed = _seed(seed)
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise DataError(f"{name}: must be a fraction in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction + test_fraction: must be < 1, got {val_fraction + test_fraction}")
    rng = np.random.default_rng(seed)
    assignment = pd.Series("train", index=table.index, dtype=object, name="part")
    for _, rows in table.groupby(table["label"].astype(str), sort=True):
        index = rows.index.to_numpy()[rng.permutation(len(rows))]
        n_test = int(round(test_fraction * len(index)))
        n_val = min(int(round(val_fraction * len(index))), len(index) - n_test - 1)
        assignment[index[:n_test]] = "test"
        assignment[index[n_test:n_test + max(n_val, 0)]] = "val"
    return Split(kind="random", assignment=assignment, seed=seed, speaker_dependent=True,
                 params={"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed})


def leave_speakers_out_folds(table: pd.DataFrame, *, k: int = 5, seed: int = 0, val_speakers: int = 1) -> list[Split]:
    """k speaker folds: each speaker is in exactly one test fold; genders are dealt evenly over folds.

    Fold i validates on val_speakers speakers drawn first from fold i+1 (so each speaker validates
    about once) and trains on the rest.
    """
    _need_columns(table, ("speaker",))
    seed = _seed(seed)
    speakers = sorted(table["speaker"].astype(str).unique().tolist())
    n = len(speakers)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= n:
        raise DataError(f"k: must be an integer in 2..{n} (the number of speakers), got {k!r}")
    if isinstance(val_speakers, bool) or not isinstance(val_speakers, (int, np.integer)) or val_speakers < 0:
        raise DataError(f"val_speakers: must be an integer >= 0, got {val_speakers!r}")
    rng = np.random.default_rng(seed)
    genders = _speaker_genders(table, speakers)
    groups = [np.arange(n)] if genders is None else [
        np.flatnonzero(genders == 1.0), np.flatnonzero(genders == 0.0), np.flatnonzero(np.isnan(genders))]
    order = np.concatenate([g[rng.permutation(g.size)] for g in groups])
    folds = [order[i::k] for i in range(k)]
    largest = max(f.size for f in folds)
    if val_speakers > n - largest - 1:
        raise DataError(f"val_speakers: {val_speakers} is too many for {n} speakers in {k} folds "
                        f"(at most {n - largest - 1})")
    splits = []
    for i, test in enumerate(folds):
        following = [folds[(i + j) % k] for j in range(1, k)]
        pool = np.concatenate([f[rng.permutation(f.size)] for f in following])
        speaker_part = {**dict.fromkeys(speakers, "train"), **{speakers[j]: "test" for j in test},
                        **{speakers[j]: "val" for j in pool[:val_speakers]}}
        splits.append(Split(kind="fold", assignment=_assignment(table, speaker_part), seed=seed,
                            speaker_dependent=False,
                            params={"k": int(k), "fold": i, "val_speakers": int(val_speakers), "seed": seed}))
    return splits


def _row_mask(table: pd.DataFrame, rows) -> np.ndarray:
    """rows (None = all, else a boolean mask over the table's rows) as a numpy boolean array."""
    if rows is None:
        return np.ones(len(table), dtype=bool)
    mask = np.asarray(rows)
    if mask.dtype != bool or mask.shape != (len(table),):
        raise DataError(f"rows: expected a boolean mask of the table's {len(table)} rows, "
                        f"got {mask.dtype} of shape {mask.shape}")
    if not mask.any():
        raise DataError("rows: the mask selects no clip")
    return mask


def speaker_folds(table: pd.DataFrame, k: int, *, seed: int, rows=None, name: str = "k") -> list[np.ndarray]:
    """k folds of the speakers of `rows` (a boolean mask; default all rows): for each fold the boolean
    row mask of its held-out speakers' clips (within rows). Every speaker is held out exactly once;
    fold sizes differ by at most one speaker; folds are stratified by label (and gender) with
    speaker_split's scoring, which first of all keeps every class in each fold's complement. ``name``:
    what errors call k (the field it came from).
    """
    _need_columns(table, ("speaker", "label"))
    seed = _seed(seed)
    mask = _row_mask(table, rows)
    pool = table[mask]
    n = pool["speaker"].astype(str).nunique()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= n:
        raise DataError(f"{name}: {k!r} folds need an integer from 2 to the number of speakers ({n})")
    speakers, counts, genders = _speaker_counts(pool)
    rng = np.random.default_rng(seed)
    candidates = [{f"fold{i}": np.sort(order[i::k]) for i in range(k)}
                  for order in (rng.permutation(n) for _ in range(_CANDIDATES))]
    chosen = _best_candidate(candidates, counts, genders, rng)
    speaker = table["speaker"].astype(str).to_numpy()
    return [mask & np.isin(speaker, [speakers[j] for j in chosen[f"fold{i}"]]) for i in range(k)]


def outer_fold_assignments(table: pd.DataFrame, n_folds: int, *, val_speakers: int | float, seed: int,
                           test_speakers: int | float = 0.2, name: str = "n_folds") -> list[pd.Series]:
    """One train/val/test assignment per outer fold of a speaker cross-validation.

    n_folds >= 2: test = that fold's speakers (speaker_folds), val = val_speakers speakers chosen
    among the rest as speaker_split chooses them (an int, or a fraction of all speakers), train
    = the rest; every speaker is tested exactly once. n_folds == 1: the one split speaker_split
    makes with the same seed and counts (test_speakers applies only then). Each assignment
    passes check_split.
    """
    _need_columns(table, ("speaker", "label"))
    seed = _seed(seed)
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 1:
        raise DataError(f"{name}: must be an integer >= 1, got {n_folds!r}")
    if n_folds == 1:
        split = speaker_split(table, val_speakers=val_speakers, test_speakers=test_speakers, seed=seed)
        check_split(table, split.assignment, where="outer fold 0")
        return [split.assignment]
    n = table["speaker"].astype(str).nunique()
    n_val = _speaker_count(val_speakers, n, "val_speakers")
    assignments = []
    for i, test in enumerate(speaker_folds(table, n_folds, seed=seed, name=name)):
        rest = table[~test]
        if n_val > rest["speaker"].nunique() - 1:
            raise DataError(f"val_speakers: {n_val} is too many: outer fold {i} leaves "
                            f"{rest['speaker'].nunique()} speakers for val and train")
        speaker_part = _pick_speakers(rest, {"val": n_val}, np.random.default_rng([seed, i]))
        assignment = _assignment(table, speaker_part)
        assignment[test] = "test"
        check_split(table, assignment, where=f"outer fold {i}")
        assignments.append(assignment)
    return assignments


def _first_shared(keys: pd.Series, parts: pd.Series) -> tuple | None:
    """(key, [(row, part), ...]) for the first key found in two parts, else None."""
    frame = pd.DataFrame({"key": keys.to_numpy(), "part": parts.to_numpy()}, index=keys.index)
    spread = frame.groupby("key", sort=True)["part"].nunique()
    shared = spread.index[spread > 1]
    if len(shared) == 0:
        return None
    rows = frame[frame["key"] == shared[0]].drop_duplicates("part")
    return shared[0], list(zip(rows.index, rows["part"]))


def _class_without_training(table: pd.DataFrame, parts: pd.Series) -> str | None:
    """The message for the first class present in the table but absent from the train part, else None."""
    labels = table["label"].astype(str)
    missing = sorted(set(labels) - set(labels[parts == "train"]))
    if not missing:
        return None
    label = missing[0]
    rows = table[labels == label]
    where = (pd.DataFrame({"speaker": rows["speaker"].astype(str), "part": parts[rows.index]})
             .drop_duplicates().sort_values(["speaker", "part"]))
    held = ", ".join(f"{s} ({p})" for s, p in zip(where["speaker"], where["part"]))
    also = f" (also without training clips: {', '.join(missing[1:])})" if len(missing) > 1 else ""
    return (f"class '{label}' has no clip in the train part: its speakers are {held}{also}; drop it "
            f"with the corpus option drop_labels: [{', '.join(missing)}]")


def check_split(table: pd.DataFrame, assignment: pd.Series, *, speaker_independent: bool = True,
                where: str = "split") -> None:
    """Raise DataError (one line, starting with `where`) when a split leaks or cannot train a class.

    Refused: the same audio (resolved path, or content hash when the table has that column) in
    two parts; a speaker in two parts (when speaker_independent); a class of the table without
    any clip in the train part. Rows whose assignment is missing belong to no part.
    """
    _need_columns(table, ("path", "speaker", "label"))
    if not isinstance(assignment, pd.Series) or not assignment.index.equals(table.index):
        raise DataError(f"{where}: the assignment's index does not match the table's")
    parts = assignment.astype(object)
    used = parts.notna()
    keys = [("the same file", table["path"].astype(str).map(os.path.realpath))]
    if "content_hash" in table.columns:
        keys.append(("identical audio", table["content_hash"].astype(str)))
    for what, key in keys:
        found = _first_shared(key[used], parts[used])
        if found is not None:
            listed = " and ".join(f"{table.at[row, 'path']} ({part})" for row, part in found[1])
            raise DataError(f"{where}: {what} is in two parts: {listed}")
    if speaker_independent:
        found = _first_shared(table["speaker"].astype(str)[used], parts[used])
        if found is not None:
            raise DataError(f"{where}: speaker {found[0]} is in {' and '.join(p for _, p in found[1])} "
                            f"(a speaker-independent split keeps each speaker in one part)")
    message = _class_without_training(table[used], parts[used])
    if message is not None:
        raise DataError(f"{where}: {message}")


_SPEC_KEYS = {"speaker": {"val_speakers", "test_speakers", "seed"},
              "random": {"val_fraction", "test_fraction", "seed"},
              "fold": {"k", "fold", "val_speakers", "seed"}}


def make_split(table: pd.DataFrame, spec: dict) -> Split:
    """Build a split from a spec: {"kind": "speaker"|"random"|"fold", ...that function's kwargs}.

    For "fold", spec["fold"] (default 0) picks one of the k folds. Speaker and fold splits pass
    check_split (no shared audio or speaker across parts, every class in train).
    """
    if not isinstance(spec, dict):
        raise DataError(f"split: expected a mapping with 'kind', got {type(spec).__name__}")
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in KINDS:
        raise DataError(f"split.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(spec) - _SPEC_KEYS[kind])
    if unknown:
        raise DataError(f"split.{unknown[0]}: not a setting of a '{kind}' split "
                        f"(settings: {', '.join(sorted(_SPEC_KEYS[kind]))})")
    if kind == "random":
        return random_split(table, **spec)
    if kind == "speaker":
        split = speaker_split(table, **spec)
    else:
        fold = spec.pop("fold", 0)
        folds = leave_speakers_out_folds(table, **spec)
        if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < len(folds):
            raise DataError(f"split.fold: must be an integer in 0..{len(folds) - 1}, got {fold!r}")
        split = folds[int(fold)]
    check_split(table, split.assignment, where=f"split ({kind})")
    return split
