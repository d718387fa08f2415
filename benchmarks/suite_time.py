"""How long `make test` takes on a fresh clone, as a new user or CI runs it: clone, install, lint, pytest.

    python benchmarks/suite_time.py                       # HEAD, 3 runs
    python benchmarks/suite_time.py --baseline ca71326    # ca71326 once, then HEAD 3 times: the ratio of pytest times
    python benchmarks/suite_time.py --runs 1 --args "--order reverse"

Each run is a fresh `git clone` of this repository at the commit into a temporary folder (its own .venv, installed by
`make test` from pip's cache), timed as a whole and by pytest's own closing line; the clone is removed afterwards.
Machines of this class differ by up to 1.6x in wall time: the ratio of two commits measured one after the other on
the same machine is the figure to compare. Needs nothing beyond the standard library, git and make.
"""

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST_LINE = re.compile(r"=+ (?P<counts>.*?) in (?P<seconds>[\d.]+)s")


def fresh_run(commit: str, args: str, log: Path) -> dict:
    """`make test` in a fresh clone at commit: exit status, seconds in all, pytest's seconds and counts."""
    folder = Path(tempfile.mkdtemp(prefix="rewardflow-suite-time-"))
    try:
        clone = folder / "rewardflow"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
        started = time.monotonic()
        with log.open("w") as out:
            code = subprocess.run(["make", "test", f"ARGS={args}"], cwd=clone, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # make test runs pytest twice (the parallel tests, then those marked alone): both closing lines count
    closing = list(PYTEST_LINE.finditer(log.read_text()))
    pytest_s = sum(float(m["seconds"]) for m in closing) if closing else float("nan")
    counts = " + ".join(m["counts"] for m in closing) or "no pytest closing line"
    return {"commit": commit, "rc": code.returncode, "make_test_s": seconds, "pytest_s": pytest_s, "counts": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="HEAD", help="the commit measured --runs times (default HEAD)")
    parser.add_argument("--baseline", help="a commit measured once first; the ratio of pytest times is printed")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--args", default="", help="pytest arguments, passed as make test ARGS=...")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()), help="where each run's log goes")
    opts = parser.parse_args()

    def resolve(rev: str) -> str:
        return subprocess.run(
            ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    commit = resolve(opts.commit)  # once: HEAD may move while the runs go on
    plan = ([(resolve(opts.baseline), "")] if opts.baseline else []) + [(commit, opts.args)] * opts.runs
    results = []
    for i, (rev, args) in enumerate(plan, 1):
        log = opts.logs / f"suite-time-{i}-{rev}.log"
        result = fresh_run(rev, args, log)
        results.append(result)
        print(
            f"run {i}: {rev} rc {result['rc']}  make test {result['make_test_s']:.0f} s  "
            f"pytest {result['pytest_s']:.0f} s  ({result['counts']}; log {log})",
            flush=True,
        )
    measured = results[1:] if opts.baseline else results
    times = sorted(r["pytest_s"] for r in measured)
    print(
        f"\n{commit} pytest s: min {times[0]:.0f}  median {statistics.median(times):.0f}  "
        f"max {times[-1]:.0f}; make test s: " + " / ".join(f"{r['make_test_s']:.0f}" for r in measured)
    )
    if opts.baseline:
        print(
            f"ratio of pytest times, median / baseline {results[0]['commit']}: "
            f"{statistics.median(times) / results[0]['pytest_s']:.2f}"
        )
    print(f"rerun: python benchmarks/suite_time.py {' '.join(sys.argv[1:])}")
    sys.exit(max(r["rc"] for r in results))


if __name__ == "__main__":
    main()
