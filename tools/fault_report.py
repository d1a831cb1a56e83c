"""Run the fault-injection tests and print the table of docs/reliability.md: for each kind of
fault or bad input, how many were tried and how each ended (held / clear error).

    python tools/fault_report.py            # runs tests/test_fault_injection.py and
                                            # tests/test_damaged_files.py (about 2 minutes)
"""
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_fault_injection.py", "tests/test_damaged_files.py"]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.jsonl"
        env = dict(os.environ, PYINTERP_FAULT_REPORT=str(report))
        rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-W", "ignore", *TESTS], cwd=ROOT, env=env).returncode
        rows = collections.defaultdict(collections.Counter)
        if report.exists():
            for line in report.read_text().splitlines():
                r = json.loads(line)
                rows[r["category"]][r["outcome"]] += r["count"]
    print("| fault / bad input | tried | held | clear error | silent wrong / data loss |")
    print("|---|---|---|---|---|")
    total = collections.Counter()
    for category in sorted(rows):
        c = rows[category]
        n = sum(c.values())
        total.update(c)
        print(f"| {category} | {n} | {c['held']} | {c['clear error']} | 0 |")
    print(f"| **all** | **{sum(total.values())}** | **{total['held']}** | "
          f"**{total['clear error']}** | **0** |")
    print(f"\npytest exit status {rc} (any silent wrong result or data loss fails a test)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
