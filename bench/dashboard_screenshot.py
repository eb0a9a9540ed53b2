"""A headless-Chromium screenshot of optuna-dashboard's history page for one strategy run of a study.

    python bench/dashboard_screenshot.py STUDY_DIR OUT.png [--study "tpe repeat=0 outer_fold=0"]

Starts ``optuna-dashboard`` on the study's ``optuna.db`` on 127.0.0.1 (a free port), opens the Optuna
study's page (history, best value, parameter importances) in headless Chromium (Debian: ``apt-get install
-y chromium``) and stops both. Only loopback traffic.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ser_tune.study.optuna_store import storage_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def studies(port: int, seconds: float = 60) -> list[dict]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                return json.loads(response.read())["study_summaries"]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--study", default="tpe repeat=0 outer_fold=0", help="the Optuna study's name")
    p.add_argument("--size", default="1400,1000", help="window width,height")
    args = p.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("error: no chromium (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), storage_url(args.study_dir),
                                  "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        found = [s for s in studies(port) if s["study_name"] == args.study]
        if not found:
            print(f"error: no Optuna study named {args.study!r} in {args.study_dir}", file=sys.stderr)
            return 2
        url = f"http://127.0.0.1:{port}/dashboard/studies/{found[0]['study_id']}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={args.size}", "--virtual-time-budget=15000",
                        f"--screenshot={args.out.resolve()}", url],
                       check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"{args.out}: {url}")
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
