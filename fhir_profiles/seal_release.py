"""Seal a criteria release directory: write its ``release.json`` manifest, or check it.

A release directory (``smart_app/data/criteria/<id>-<version>/``) holds ``criteria.json`` and every
ValueSet and CodeSystem the criteria read (docs/clinical-criteria.md#release-history). The manifest names the
criteria version, pins each ValueSet by ``url`` and ``version``, and records the sha256 of every file, so
the app refuses a release whose files changed after it was sealed. A sealed release is never edited:
a new version goes into a new directory.

    python fhir_profiles/seal_release.py smart_app/data/criteria/back-mice-1.1.0
    python fhir_profiles/seal_release.py --check smart_app/data/criteria/back-mice-1.0.0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smart_app.clinical.criteria import (  # noqa: E402
    MANIFEST,
    CriteriaError,
    coded_references,
    referenced_valuesets,
)


def manifest_for(directory: Path) -> dict[str, Any]:
    """The manifest the directory's files call for (raises ``CriteriaError`` when one is missing)."""
    criteria = json.loads((directory / "criteria.json").read_text(encoding="utf-8"))
    resources: dict[str, tuple[str, dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.json")):
        if path.name in (MANIFEST, "criteria.json"):
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        resources[data["url"]] = (path.name, data)
    wanted = referenced_valuesets(criteria, {url: data for url, (_, data) in resources.items()})
    # ValueSets that give the displays of codes the criteria write themselves (the suggestion's codes)
    named = set(coded_references(criteria))
    for url, (_, data) in resources.items():
        for include in data.get("compose", {}).get("include", []):
            if any((include.get("system"), c.get("code")) in named for c in include.get("concept", [])):
                wanted.add(url)
    missing = sorted(wanted - set(resources))
    if missing:
        raise CriteriaError(f"{directory.name}: ValueSet(s) not in the release: {', '.join(missing)}")
    unused = sorted(
        name
        for url, (name, data) in resources.items()
        if data.get("resourceType") == "ValueSet" and url not in wanted
    )
    if unused:
        raise CriteriaError(f"{directory.name}: files the criteria do not use: {', '.join(unused)}")
    files = ["criteria.json", *sorted(name for name, _ in resources.values())]
    return {
        "url": criteria["url"],
        "version": criteria["version"],
        "criteria": "criteria.json",
        "valuesets": _pins(resources, "ValueSet"),
        "codesystems": _pins(resources, "CodeSystem"),
        "sha256": {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in files},
    }


def _pins(resources: dict[str, tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, str]]:
    return [
        {"url": url, "version": data["version"], "file": name}
        for url, (name, data) in sorted(resources.items())
        if data.get("resourceType") == kind
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--check", action="store_true", help="verify the manifest instead of writing it")
    args = parser.parse_args(argv)
    target = args.directory / MANIFEST
    try:
        wanted = manifest_for(args.directory)
    except (CriteriaError, OSError, KeyError, ValueError) as exc:
        print(f"seal_release: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(wanted, indent=2, sort_keys=True) + "\n"
    if args.check:
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            print(f"seal_release: {target} does not match the release's files", file=sys.stderr)
            return 1
        return 0
    if target.exists():
        print(f"seal_release: {target} exists: a sealed release is never edited", file=sys.stderr)
        return 1
    target.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
