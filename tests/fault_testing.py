"""Shared by the fault-injection tests (tests/test_fault_injection.py, test_damaged_files.py):
a tally of faults injected / bad inputs tried and their outcomes, written as JSON lines to
$PYINTERP_FAULT_REPORT when set (docs/reliability.md quotes those counts)."""
from __future__ import annotations

import json
import os
from collections import Counter

TALLY: Counter = Counter()


def record(category: str, outcome: str, n: int = 1) -> None:
    """category: e.g. "sigkill:sae"; outcome: "held" (result as if nothing happened),
    "clear error" (an error naming the file / directory and what was expected)."""
    TALLY[(category, outcome)] += n


def dump(module: str) -> None:
    path = os.environ.get("PYINTERP_FAULT_REPORT")
    if not path or not TALLY:
        return
    with open(path, "a") as f:
        for (category, outcome), n in sorted(TALLY.items()):
            f.write(json.dumps({"module": module, "category": category, "outcome": outcome,
                                "count": n}) + "\n")
    TALLY.clear()
