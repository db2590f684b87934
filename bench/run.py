"""`make bench`: run every benchmark module and merge its figures into bench/results.json.

Each module in MODULES exposes `run(database_url: str) -> dict[str, float]` and works in a scratch
database of its own on the given server. Figures are measurements of this machine, not asserts.
A module may also set `PREFIXES` (e.g. `("stack.", "soak.")`): the keys it owns, all replaced by each
run, so that figures of a process or case it no longer measures do not linger in results.json.
Usage: python -m bench.run [module ...]   (default: all)
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.json"
MODULES = ["bench.ledger", "bench.mpesa", "bench.operations", "bench.reports_export", "bench.stack"]


def main(argv: list[str]) -> int:
    database_url = os.environ["DATABASE_URL"]
    wanted = argv or MODULES
    results: dict[str, object] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    failed = []
    for name in wanted:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"{name}: not written yet, skipped", file=sys.stderr)
                continue
            raise
        started = time.monotonic()
        print(f"== {name}", file=sys.stderr)
        try:
            figures = module.run(database_url)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failed.append(name)
            print(f"{name} failed: {exc!r}", file=sys.stderr)
            continue
        for prefix in getattr(module, "PREFIXES", ()):
            for key in [k for k in results if k.startswith(prefix)]:
                del results[key]
        results.update(figures)
        print(json.dumps(figures, indent=2), file=sys.stderr)
        print(f"{name} took {time.monotonic() - started:.0f}s", file=sys.stderr)
    results["_machine"] = f"{platform.node()} {os.cpu_count()} cpus, python {platform.python_version()}"
    results["_measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
