"""Shared by the benchmark scripts: print a result and write it as JSON."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def write(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write ``result`` with the time it was measured, so committed results say when they were taken."""
    result = {**result, "date": datetime.now(UTC).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def report(result: dict[str, Any], path: Path) -> None:
    """Write ``result`` (dated) and print it."""
    print(json.dumps(write(result, path), indent=2))
