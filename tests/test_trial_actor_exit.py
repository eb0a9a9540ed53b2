"""A trial actor ended by Ray's SIGTERM prints no traceback on the study's terminal: Ray's handler raises
SystemExit wherever the main thread is, and one raised inside a finalizer is otherwise printed as
"Exception ignored ... Traceback" and swallowed (a CI run of the interrupted-study test saw it at a unit's end)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A SystemExit raised in a weakref callback, as Ray's SIGTERM handler raises it when the signal lands there.
SCRIPT = """
import weakref
{install}
class Held: pass
held = Held()
def finalizer(ref): raise SystemExit(1)
ref = weakref.ref(held, finalizer)
del held
print("went on after the exit")
"""


def _run(install: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(install=install)], cwd=REPO, text=True,
                          capture_output=True, timeout=60)


def test_a_system_exit_in_a_finalizer_ends_the_actor_quietly():
    bare = _run("")
    assert "Traceback" in bare.stderr and "went on after the exit" in bare.stdout   # what the hook prevents
    quiet = _run("from ser_tune.study.warm import exit_quietly_from_finalizers\n"
                 "exit_quietly_from_finalizers(); exit_quietly_from_finalizers()")   # twice: one hook
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_other_unraisable_errors_still_reach_the_previous_hook():
    other = _run("from ser_tune.study.warm import exit_quietly_from_finalizers\nexit_quietly_from_finalizers()\n"
                 "class Noisy:\n    def __del__(self): raise ValueError('kept')\nNoisy()")
    assert "ValueError: kept" in other.stderr and "went on after the exit" not in other.stdout
