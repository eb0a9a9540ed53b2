"""The processes of a study's local Ray, noted in its storage, so that a launcher killed before it could shut Ray
down (SIGKILL) leaves nothing running past the next study started in that storage: Ray's agents outlive its raylet.
Only processes this launcher started are noted, each with its start time, so none of another Ray (or a process
that took a noted id since) is ever ended. Linux (/proc); elsewhere nothing is noted."""
from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from .folder import write_atomic

RECORDS = "_local_ray"   # under the storage: one file per launcher whose local Ray runs


def note(storage: Path) -> None:
    """Note this launcher and the processes of its local Ray (once the Ray has started)."""
    me = os.getpid()
    records = Path(storage) / RECORDS
    records.mkdir(parents=True, exist_ok=True)
    write_atomic(records / f"{me}.json", json.dumps([[pid, started(pid)] for pid in [me, *descendants(me)]]))


def forget(storage: Path) -> None:
    """This launcher shut its Ray down."""
    (Path(storage) / RECORDS / f"{os.getpid()}.json").unlink(missing_ok=True)


def end_leftovers(storage: Path) -> int:
    """End the noted Ray processes of launchers that died without shutting their Ray down; returns how many."""
    ended = 0
    for record in (Path(storage) / RECORDS).glob("*.json"):
        try:
            (launcher, launched), *processes = json.loads(record.read_text())
        except (OSError, ValueError):
            processes, launched, launcher = [], None, -1
        if launched is not None and started(launcher) == launched:
            continue   # its launcher still runs: its Ray is in use
        for pid, start in processes:
            if start is not None and started(pid) == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    ended += 1
        record.unlink(missing_ok=True)
    return ended


def started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found
