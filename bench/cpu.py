"""CPU seconds of a PostgreSQL backend, for the benchmarks' CPU-per-operation figures."""

from __future__ import annotations

import os
from pathlib import Path


def backend_cpu(pid: int) -> float | None:
    """CPU seconds a PostgreSQL backend has used (Linux, server on this machine), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
