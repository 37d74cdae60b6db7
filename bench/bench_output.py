"""Shared by the benchmark scripts: print a result and write it as JSON."""

import json
from pathlib import Path
from typing import Any


def report(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
