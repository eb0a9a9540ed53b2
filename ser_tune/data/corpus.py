"""A loaded corpus (one table row per usable clip) and load_corpus, the one entry point to every corpus."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .audio import audio_info
from .corpora import cremad, csv_manifest, emodb, iemocap, ravdess
from .corpora.common import Scan
from .errors import AudioError, CorpusError, DataError
from .labels import check_view, default_view

CORPORA = ("emodb", "ravdess", "cremad", "iemocap", "csv", "synthetic")

BASE_COLUMNS = ("path", "label", "speaker", "corpus", "duration", "sample_rate")
OPTIONAL_COLUMNS = ("gender", "intensity", "text", "session", "original_label",
                    "arousal", "valence", "dominance")
DIMENSIONS = ("arousal", "valence", "dominance")

_SCANNERS = {"emodb": emodb.scan, "ravdess": ravdess.scan, "cremad": cremad.scan,
             "iemocap": iemocap.scan, "csv": csv_manifest.scan}


@dataclass
class Corpus:
    name: str
    root: Path
    table: pd.DataFrame          # one row per usable clip, RangeIndex
    skipped: list[dict]          # [{"path": str, "reason": str}]
    synthetic: bool = False      # True for the generated stand-in; reports must say so

    @property
    def labels(self) -> list[str]:
        return sorted(self.table["label"].unique().tolist())

    def summary(self) -> dict:
        t = self.table
        out = {
            "corpus": self.name,
            "root": str(self.root),
            "synthetic": self.synthetic,
            "files": int(len(t)),
            "speakers": int(t["speaker"].nunique()),
            "labels": {str(k): int(v) for k, v in t["label"].value_counts().sort_index().items()},
            "duration": {"min": float(t["duration"].min()), "max": float(t["duration"].max()),
                         "mean": float(t["duration"].mean())},
            "sample_rates": sorted(int(s) for s in t["sample_rate"].unique()),
            "skipped": [dict(s) for s in self.skipped],
        }
        if "gender" in t.columns and t["gender"].notna().any():
            per_speaker = t.drop_duplicates("speaker")["gender"].fillna("unknown")
            out["speaker_genders"] = {str(k): int(v) for k, v in per_speaker.value_counts().sort_index().items()}
        return out

    def __repr__(self) -> str:
        flag = ", synthetic" if self.synthetic else ""
        return (f"Corpus({self.name!r}, {self.root}, {len(self.table)} clips, "
                f"{self.table['speaker'].nunique()} speakers, {len(self.skipped)} skipped{flag})")


def build_table(name: str, root: Path, scan: Scan, *, check_audio: bool) -> tuple[pd.DataFrame, list[dict]]:
    """Probe every record's audio (header always, samples when check_audio) and build the table."""
    skipped = list(scan.skipped)
    rows = []
    for record in scan.records:
        try:
            duration, sample_rate = audio_info(record["path"], scan_samples=check_audio)
        except AudioError as err:
            skipped.append({"path": record["path"], "reason": err.reason})
            continue
        rows.append({**record, "corpus": name, "duration": duration, "sample_rate": sample_rate})
    if not rows:
        first = f"; e.g. {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
        raise CorpusError(f"{root}: no usable {name} clips left ({len(skipped)} files skipped{first})")
    table = pd.DataFrame(rows)
    present = [c for c in OPTIONAL_COLUMNS if c in table.columns]
    table = table[list(BASE_COLUMNS) + present]
    table = table.sort_values("path", kind="stable").reset_index(drop=True)
    table["speaker"] = table["speaker"].astype(str)
    table["duration"] = table["duration"].astype(float)
    table["sample_rate"] = table["sample_rate"].astype(np.int64)
    for column in DIMENSIONS:
        if column in table.columns:
            table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    return table, skipped


def resolve_view(name: str, label_map: str | None) -> str | None:
    return default_view(name) if label_map is None else check_view(label_map)


def load_corpus(name: str, root: str | Path, *, label_map: str | None = None,
                check_audio: bool = True, **options) -> Corpus:
    """Read a corpus folder (or CSV manifest) into a Corpus; see the module docs of each corpus.

    check_audio=True also streams every file's samples to skip silent / non-finite audio;
    with False only headers are read (unreadable, empty and zero-length files are still skipped).
    """
    if name not in CORPORA:
        raise DataError(f"corpus: unknown corpus '{name}' (known: {', '.join(CORPORA)})")
    if root is None or str(root) == "":
        raise CorpusError(f"root: no folder given for corpus '{name}'")
    root = Path(root).expanduser().resolve()
    view = resolve_view(name, label_map)
    if name == "synthetic":
        from .synthetic import load_synthetic   # late: synthetic builds on this module
        return load_synthetic(root, view=view, check_audio=check_audio, **options)
    if options:
        raise DataError(f"options: corpus '{name}' takes no options (got {', '.join(sorted(options))})")
    scan = _SCANNERS[name](root, view)
    table, skipped = build_table(name, root, scan, check_audio=check_audio)
    return Corpus(name=name, root=root, table=table, skipped=skipped)
