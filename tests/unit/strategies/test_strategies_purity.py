"""strategies is pure: importing it (and running a non-modAL strategy) loads nothing forbidden."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
FORBIDDEN = ("torch", "sqlmodel", "daemon", "models", "connectors", "logging.config")

PROBE = """
import json, sys
import numpy as np
import strategies
after_import = sorted(sys.modules)
view = strategies.PoolView(np.eye(4), np.full((4, 2), 0.5), np.array([1, 2]), 1, np.eye(4)[:1])
strategies.select_batch(strategies.DEFAULT_STRATEGY, view, 2, rng=np.random.default_rng(0))
print(json.dumps({"import": after_import, "select": sorted(sys.modules)}))
"""


def loaded_modules() -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    result: dict[str, list[str]] = json.loads(out.stdout)
    return result


def test_import_and_default_strategy_load_no_forbidden_module() -> None:
    modules = loaded_modules()
    for stage, names in modules.items():
        bad = [m for m in names if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
        assert bad == [], f"after {stage}: {bad}"
    assert "modAL" not in modules["select"], "modAL (which imports torch) is only for the modal_* arms"


def test_strategies_sources_import_only_allowed_packages() -> None:
    allowed = {"numpy", "scipy", "modAL", "strategies", "__future__", "dataclasses", "typing", "collections"}
    for path in (REPO / "strategies").glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert words[1].split(".")[0] in allowed, f"{path.name}: {line.strip()}"
