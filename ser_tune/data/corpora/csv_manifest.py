"""A user's CSV manifest: required columns path, label, speaker (paths relative to the CSV's folder)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..audio import unread_format_reason
from ..errors import CorpusError
from ..labels import map_labels
from .common import Scan

MANIFEST = "manifest.csv"
REQUIRED = ("path", "label", "speaker")
TEXT_COLUMNS = ("gender", "text", "session", "intensity")
NUMERIC_COLUMNS = ("arousal", "valence", "dominance")
GENDER = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}


def manifest_file(root: Path) -> Path:
    if root.is_dir():
        candidate = root / MANIFEST
        if not candidate.is_file():
            raise CorpusError(f"{root}: no {MANIFEST} in this folder (give the CSV file or its folder)")
        return candidate
    if not root.exists():
        raise CorpusError(f"{root}: CSV manifest not found")
    return root


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def read_manifest(file: Path) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """The manifest's rows (text) and its numeric columns parsed; CorpusError naming file and line."""
    try:
        table = pd.read_csv(file, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise CorpusError(f"{file}: cannot read CSV manifest ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    for column in REQUIRED:
        if column not in table.columns:
            raise CorpusError(f"{file}: missing column '{column}' (required: {', '.join(REQUIRED)})")
    if table.empty:
        raise CorpusError(f"{file}: the manifest has no rows")
    numeric = {}
    for column in NUMERIC_COLUMNS:
        if column in table.columns:
            raw = table[column].str.strip().replace("", np.nan)
            values = pd.to_numeric(raw, errors="coerce")
            bad = raw.notna() & values.isna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0]) + 2   # +2: header line, 1-based
                raise CorpusError(f"{file}: column '{column}', line {row}: not a number: {raw[bad].iloc[0]!r}")
            numeric[column] = values
    return table, numeric


def scan(root: Path, view: str | None) -> Scan:
    file = manifest_file(root)
    table, numeric = read_manifest(file)
    labels = table["label"].map(_text)
    mapped = labels if view is None else map_labels(labels, "csv", view)

    base = file.parent
    result = Scan(source=file)
    for i, row in table.iterrows():
        line = int(i) + 2
        rel = _text(row["path"])
        if rel is None:
            result.skip(f"{file}:{line}", "empty 'path'")
            continue
        path = (base / Path(rel).expanduser()).resolve()   # an absolute path replaces base
        missing = [c for c in ("label", "speaker") if _text(row[c]) is None]
        if missing:
            result.skip(path, f"{file.name} line {line}: empty '{missing[0]}'")
            continue
        label = mapped[i]
        if not isinstance(label, str):
            result.skip(path, f"label '{labels[i]}' has no counterpart in view {view}")
            continue
        unread = unread_format_reason(path)
        if unread is not None:
            result.skip(path, unread)
            continue
        if not path.is_file():
            result.skip(path, "file not found")
            continue
        record = {"path": str(path), "label": label, "speaker": _text(row["speaker"]),
                  "original_label": labels[i], "listed_as": f"line {line} ({rel})"}
        record.update({column: _text(row[column]) for column in TEXT_COLUMNS if column in table.columns})
        if record.get("gender") is not None:
            record["gender"] = GENDER.get(record["gender"].lower(), record["gender"])
        record.update({column: float(values[i]) for column, values in numeric.items()})
        result.records.append(record)
    return result
