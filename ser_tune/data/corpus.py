"""A loaded corpus (one table row per usable clip) and load_corpus, the one entry point to every corpus."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .audio import MIN_DURATION, audio_info, content_hash
from .corpora import cremad, csv_manifest, emodb, iemocap, ravdess
from .corpora.common import Scan, existing_folder
from .errors import AudioError, CorpusError, DataError
from .labels import check_view, default_view
from . import synthetic

CORPORA = ("emodb", "ravdess", "cremad", "iemocap", "csv", "synthetic")

BASE_COLUMNS = ("path", "label", "speaker", "corpus", "duration", "sample_rate", "content_hash")
OPTIONAL_COLUMNS = ("gender", "intensity", "text", "session", "original_label",
                    "arousal", "valence", "dominance")
DIMENSIONS = ("arousal", "valence", "dominance")

_TITLES = {"emodb": emodb.TITLE, "ravdess": ravdess.TITLE, "cremad": cremad.TITLE, "iemocap": iemocap.TITLE}
_SCANNERS = {"emodb": emodb.scan, "ravdess": ravdess.scan, "cremad": cremad.scan,
             "iemocap": iemocap.scan, "csv": csv_manifest.scan, "synthetic": synthetic.scan}


@dataclass
class Corpus:
    name: str
    root: Path
    table: pd.DataFrame          # one row per usable clip, RangeIndex
    skipped: list[dict]          # [{"path": str, "reason": str}]
    synthetic: bool = False      # True for the generated stand-in; reports must say so
    dropped_labels: dict[str, int] = field(default_factory=dict)   # class -> clips dropped by drop_labels

    @property
    def labels(self) -> list[str]:
        return sorted(self.table["label"].unique().tolist())

    def summary(self) -> dict:
        t = self.table
        out = {"corpus": self.name, "root": str(self.root), "synthetic": self.synthetic, "files": int(len(t)),
               "speakers": int(t["speaker"].nunique()),
               "labels": {str(k): int(v) for k, v in t["label"].value_counts().sort_index().items()},
               "duration": {"min": float(t["duration"].min()), "max": float(t["duration"].max()),
                            "mean": float(t["duration"].mean())},
               "sample_rates": sorted(int(s) for s in t["sample_rate"].unique()),
               "skipped": [dict(s) for s in self.skipped], "dropped_labels": dict(self.dropped_labels)}
        if "gender" in t.columns and t["gender"].notna().any():
            per_speaker = t.drop_duplicates("speaker")["gender"].fillna("unknown")
            out["speaker_genders"] = {str(k): int(v) for k, v in per_speaker.value_counts().sort_index().items()}
        return out

    def __repr__(self) -> str:
        flag = ", synthetic" if self.synthetic else ""
        return (f"Corpus({self.name!r}, {self.root}, {len(self.table)} clips, "
                f"{self.table['speaker'].nunique()} speakers, {len(self.skipped)} skipped{flag})")


def unique_records(records: list[dict], source, skipped: list[dict]) -> list[dict]:
    """One record per resolved file: repeats (another spelling, a link) are skipped naming the first.

    Repeats that disagree on speaker or label are a CorpusError naming source (the manifest or
    folder), the file and both values: which one is right cannot be guessed.
    """
    first: dict[str, dict] = {}
    kept = []
    for record in records:
        record = dict(record)
        listed_as = record.pop("listed_as", record["path"])
        record["path"] = str(Path(record["path"]).resolve())
        seen = first.get(record["path"])
        if seen is None:
            first[record["path"]] = {**record, "listed_as": listed_as}
            kept.append(record)
            continue
        for column, plural in (("speaker", "speakers"), ("label", "labels")):
            if str(seen[column]) != str(record[column]):
                raise CorpusError(f"{source}: {record['path']} is listed with {plural} "
                                  f"{seen[column]} and {record[column]}")
        skipped.append({"path": record["path"],
                        "reason": f"duplicate: {listed_as} is the same file as {seen['listed_as']}"})
    return kept


def probe_records(name: str, records: list[dict], skipped: list[dict], *, check_audio: bool,
                  min_duration: float) -> list[dict]:
    """Rows of usable clips: each file's audio checked and its bytes hashed; identical copies skipped."""
    rows = []
    first_copy: dict[str, str] = {}
    for record in records:
        try:
            duration, sample_rate = audio_info(record["path"], scan_samples=check_audio, min_duration=min_duration)
            digest = content_hash(record["path"])
        except (AudioError, OSError) as err:
            why = err.reason if isinstance(err, AudioError) else f"cannot read file ({err.strerror or err})"
            skipped.append({"path": record["path"], "reason": why})
            continue
        if digest in first_copy:
            skipped.append({"path": record["path"], "reason": f"identical bytes to {first_copy[digest]}"})
            continue
        first_copy[digest] = record["path"]
        rows.append({**record, "corpus": name, "duration": duration, "sample_rate": sample_rate,
                     "content_hash": digest})
    return rows


def build_table(name: str, root: Path, scan: Scan, *, check_audio: bool,
                min_duration: float = MIN_DURATION) -> tuple[pd.DataFrame, list[dict]]:
    """Probe every record's audio (header always, samples when check_audio) and build the table."""
    skipped = list(scan.skipped)
    records = unique_records(scan.records, scan.source or root, skipped)
    rows = probe_records(name, records, skipped, check_audio=check_audio, min_duration=min_duration)
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


def drop_classes(corpus: Corpus, drop_labels) -> Corpus:
    """The corpus without the clips of the classes in drop_labels (named after the label view)."""
    if drop_labels is None or len(drop_labels) == 0:
        return corpus
    if isinstance(drop_labels, str) or not all(isinstance(x, str) for x in drop_labels):
        raise DataError(f"drop_labels: expected a list of class names, got {drop_labels!r}")
    present = corpus.labels
    for label in drop_labels:
        if label not in present:
            raise DataError(f"drop_labels: unknown class '{label}' (classes present: {', '.join(present)})")
    dropping = corpus.table["label"].isin(drop_labels)
    if dropping.all():
        raise CorpusError(f"{corpus.root}: drop_labels drops every clip of the corpus")
    counts = corpus.table.loc[dropping, "label"].value_counts().sort_index()
    corpus.table = corpus.table[~dropping].reset_index(drop=True)
    corpus.dropped_labels = {str(k): int(v) for k, v in counts.items()}
    return corpus


def check_root(name: str, root: str | Path | None) -> None:
    """The CorpusError ``load_corpus`` would raise for a root that is not there (or of the wrong kind), without
    reading it: a study says so in a second, before it imports torch and Ray."""
    if name == "synthetic" or name not in CORPORA:
        return
    if root is None or str(root) == "":
        raise CorpusError(f"root: no folder given for corpus '{name}'")
    root = Path(root).expanduser().resolve()
    if name == "csv":
        csv_manifest.manifest_file(root)
    else:
        existing_folder(root, _TITLES[name])


def load_corpus(name: str, root: str | Path, *, label_map: str | None = None, check_audio: bool = True,
                min_duration: float = MIN_DURATION, drop_labels: list[str] | None = None, **options) -> Corpus:
    """Read a corpus folder (or CSV manifest) into a Corpus; see the module docs of each corpus.

    check_audio=True also streams every file's samples to skip silent / non-finite audio;
    with False only headers are read (unreadable, empty, truncated, zero-length and too short
    files are still skipped). Clips shorter than min_duration seconds are skipped. drop_labels
    names classes (after the label view) whose clips are left out; the summary lists them.
    A file reached twice (two spellings, links) or identical bytes under two paths count once.
    """
    if name not in CORPORA:
        raise DataError(f"corpus: unknown corpus '{name}' (known: {', '.join(CORPORA)})")
    if root is None or str(root) == "":
        raise CorpusError(f"root: no folder given for corpus '{name}'")
    root = Path(root).expanduser().resolve()
    view = default_view(name) if label_map is None else check_view(label_map)
    if isinstance(min_duration, bool) or not isinstance(min_duration, (int, float)) or not min_duration >= 0:
        raise DataError(f"min_duration: must be a number of seconds >= 0, got {min_duration!r}")
    if options and name != "synthetic":
        raise DataError(f"options: corpus '{name}' takes no options (got {', '.join(sorted(options))})")
    scan = _SCANNERS[name](root, view, **options)
    table, skipped = build_table(name, root, scan, check_audio=check_audio, min_duration=float(min_duration))
    corpus = Corpus(name=name, root=root, table=table, skipped=skipped, synthetic=name == "synthetic")
    return drop_classes(corpus, drop_labels)
