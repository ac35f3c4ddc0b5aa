"""The demo, command to finished report: wall seconds of ``python -m nervus_lightning``.

    python benchmarks/demo_time.py                 # 3 repeats of each, interleaved
    python benchmarks/demo_time.py --repeats 5 --no-old

Runs the README's demo command exactly as written (no options) in a fresh folder, and beside it
the demo as it was before it had settings of its own (``--old``: ResNet18 from scratch for 10
epochs, ``model/extractor=resnet18 trainer.max_epochs=10``, the same data and report), alternately,
so that both see the same machine load. Each run is a new process: library imports, the demo data
(built once into the cache before the first timed run), training, test, thresholds, predictions
and the evaluation report with its bootstrap intervals. Prints each run's seconds, the medians,
their ratio and the phases of the last run of each command read from its log (start-up to the
first epoch, training, after training). Target (issue 20): at most 30 s on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

COMMANDS = {"demo": [], "old demo": ["model/extractor=resnet18", "trainer.max_epochs=10"]}
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def run_once(args: list[str], folder: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of one run in ``folder``, and its phases from the run's train.log."""
    start = time.perf_counter()
    started = datetime.now()
    out = subprocess.run(
        [sys.executable, "-m", "nervus_lightning", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{args} failed:\n{out.stderr[-3000:]}")
    (log,) = folder.glob("outputs/*/*/train.log")
    return seconds, _phases(log.read_text(), started, seconds)


def _phases(log: str, started: datetime, seconds: float) -> dict[str, float]:
    """Start-up (to the first logged line of the fit), training and after-training seconds."""
    times = {}
    for line in log.splitlines():
        match = STAMP.match(line)
        if match is None:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if "Seed set" in line:
            times.setdefault("fit", at)
        elif "Trainer.fit" in line:
            times["fitted"] = at
        elif "post-training work" in line:
            times["post"] = at
    if not {"fit", "fitted", "post"} <= times.keys():
        return {}
    return {
        "start-up": (times["fit"] - started).total_seconds(),
        "training": (times["fitted"] - times["fit"]).total_seconds(),
        "after training": seconds - (times["post"] - started).total_seconds(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-old", dest="old", action="store_false", help="the demo alone")
    args = parser.parse_args(argv)
    commands = COMMANDS if args.old else {"demo": COMMANDS["demo"]}
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    phases: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        # The demo data is built into the cache on first use: once here, untimed.
        warm = Path(scratch) / "warm"
        warm.mkdir()
        run_once([*COMMANDS["demo"], "trainer.max_epochs=1"], warm)
        for repeat in range(args.repeats):
            for name, overrides in commands.items():
                folder = Path(scratch) / f"{name.replace(' ', '_')}_{repeat}"
                folder.mkdir()
                took, phases[name] = run_once(overrides, folder)
                seconds[name].append(took)
                print(f"{name:>9} run {repeat + 1}: {took:5.1f} s", flush=True)
    print(f"\ncommand to finished report, {os.cpu_count()} CPUs, median of {args.repeats}:")
    for name, values in seconds.items():
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in phases[name].items())
        print(f"{name:>9}: {statistics.median(values):5.1f} s  (last run: {parts})")
    if args.old:
        ratio = statistics.median(seconds["demo"]) / statistics.median(seconds["old demo"])
        print(f"demo / old demo: {ratio:.2f}x")


if __name__ == "__main__":
    main()
