"""Criteria releases for tests: the shipped release directories, and hypothetical new releases sealed
beside them in a temporary directory."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RELEASES = ROOT / "smart_app" / "data" / "criteria"
sys.path.insert(0, str(ROOT / "fhir_profiles"))

from seal_release import manifest_for  # noqa: E402


def release_dir(version: str) -> Path:
    return RELEASES / f"back-mice-{version}"


def released(version: str = "1.0.0") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((release_dir(version) / "criteria.json").read_text(encoding="utf-8"))
    return data


def hypothetical_release(
    root: Path, version: str, change: Callable[[dict[str, Any]], None], *, base: str = "1.0.0"
) -> Path:
    """A copy of release ``base`` as ``version`` under ``root``, changed by ``change`` and sealed."""
    target = root / f"back-mice-{version}"
    shutil.copytree(release_dir(base), target)
    (target / "release.json").unlink()
    data = released(base)
    data["version"] = version
    change(data)
    (target / "criteria.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    (target / "release.json").write_text(json.dumps(manifest_for(target), indent=2), encoding="utf-8")
    return target
