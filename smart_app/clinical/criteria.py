"""Criteria releases (JSON data with the terminology each one pins) and their registry.

A release is a directory ``<id>-<version>/`` holding ``criteria.json``, every ValueSet and CodeSystem it
reads, and ``release.json``: the manifest that pins each ValueSet by url and version and records the
sha256 of every file (docs/clinical-criteria.md#release-history). A release whose files do not match its
manifest is refused, so editing a shipped ValueSet can never silently change how a released version
evaluates. Releases ship inside the package (``smart_app/data/criteria``); ``load_registry`` also takes
extra directories of published releases.

What a format-1 document leaves implicit is stated once, in :data:`FORMAT_1_DEFAULTS`; the codes those
defaults name live in the sealed reading terminology of the format (``smart_app/data/criteria/format-1``,
docs/clinical-criteria.md#neuro_deficit), never in Python. A release that states a default itself (1.1.0
does) reads its own value and its own terminology.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from smart_app.clinical import terminology
from smart_app.vocabulary import CANONICAL, DATA_DIR

TYPE_CHECKING = False  # true for type checkers only: see smart_app/__init__.py
if TYPE_CHECKING:
    from importlib.resources.abc import Traversable
    from typing import Any

MANIFEST = "release.json"
SUPPORTED_FORMATS = frozenset({1})
#: The directory of the reading terminology of format 1, and its manifest (sha256 of every file).
FORMAT_1_TERMINOLOGY = "format-1"
TERMINOLOGY_MANIFEST = "terminology.json"
_VS = f"{CANONICAL}/ValueSet/back-mice-"


class CriteriaError(ValueError):
    """A criteria release or version the engine cannot use."""


def shipped_releases() -> Path:
    """The directory of criteria releases shipped with the app."""
    return DATA_DIR / "criteria"


#: What a format-1 criteria document leaves implicit, made explicit for the engine (the way a new format
#: keyword is added without editing a released file). Later releases may state these themselves.
FORMAT_1_DEFAULTS: Mapping[str, Any] = {
    # the finding whose deciding resource names the nodule's site (for the suggestion's body site)
    "site_finding": "TYPICAL_SITE",
    # the "missing" entry asked for when the ladder stops for want of a pain score
    "pain_missing": "PAIN_SCORE",
    # the order in which the criteria are listed to people (checklist, narrative)
    "checklist_order": [
        "LBP",
        "NODULE",
        "TYPICAL_SITE",
        "PAIN_REPRODUCED",
        "NEURO_DEFICIT",
        "INJECTION_RELIEF",
    ],
    # whether a preliminary Observation that records danger (a BLOCK red flag, or a finding marked
    # ``danger``) as present counts: "no" in format 1 (1.1.0 says "yes")
    "preliminary_danger": False,
    # per finding id, what its definition leaves implicit (docs/clinical-criteria.md#reading-decisions):
    # ``danger`` findings withhold a procedure when present, so they are read safety first (abatement never
    # removes them; a present record whose date is missing or unreadable counts); ``signs`` group their
    # codes, each sign decided by its own newest record
    "findings": {
        "NEURO_DEFICIT": {
            "danger": True,
            "signs": [
                {"id": "weakness", "title": "muscle weakness", "valueset": f"{_VS}neuro-weakness"},
                {"id": "foot-drop", "title": "foot drop", "valueset": f"{_VS}neuro-foot-drop"},
                {"id": "hypoesthesia", "title": "hypoesthesia", "valueset": f"{_VS}neuro-hypoesthesia"},
                {"id": "reflex", "title": "abnormal reflex", "valueset": f"{_VS}neuro-reflex"},
            ],
        }
    },
}


@dataclass(frozen=True)
class Criteria:
    """One criteria version: the definition plus the terminology it pins."""

    data: Mapping[str, Any]
    terminology: terminology.Terminology
    source: str

    @property
    def url(self) -> str:
        return str(self.data["url"])

    @property
    def version(self) -> str:
        return str(self.data["version"])

    @property
    def title(self) -> str:
        return str(self.data["title"])

    @property
    def canonical(self) -> str:
        """``url|version`` (R4 canonical datatype), as written in Provenance.policy."""
        return f"{self.url}|{self.version}"

    def setting(self, name: str) -> Any:
        """A value the document states, else the default of its format (:data:`FORMAT_1_DEFAULTS`)."""
        return self.data.get(name, FORMAT_1_DEFAULTS[name])

    @functools.cached_property
    def findings(self) -> tuple[Mapping[str, Any], ...]:
        """``data["findings"]``, each completed with the format defaults it does not state itself."""
        return completed_findings(self.data)

    def read_valuesets(self) -> frozenset[str]:
        """Every ValueSet the engine reads with: those the document names and those its findings' format
        defaults name (the signs of NEURO_DEFICIT in 1.0.0)."""
        return self._read_valuesets

    @functools.cached_property
    def _read_valuesets(self) -> frozenset[str]:
        return frozenset(valueset_urls(self.data)) | frozenset(valueset_urls(list(self.findings)))

    def threshold(self, value: object) -> float:
        """A number, or the name of an entry of ``thresholds``."""
        if isinstance(value, str):
            return float(self.data["thresholds"][value])
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise CriteriaError(f"not a threshold: {value!r}")

    def window(self, name: str) -> int:
        return int(self.data["windows_days"][name])


def completed_findings(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """The finding definitions with what format 1 leaves implicit filled in (a stated key wins)."""
    defaults: Mapping[str, Mapping[str, Any]] = FORMAT_1_DEFAULTS["findings"]
    return tuple({**defaults.get(str(spec.get("id")), {}), **spec} for spec in data["findings"])


def valueset_urls(node: object) -> Iterator[str]:
    """Every ValueSet url referenced in a criteria definition (keys ``valueset`` / ``*_valueset``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if (key == "valueset" or key.endswith("_valueset")) and isinstance(value, str):
                yield value
            else:
                yield from valueset_urls(value)
    elif isinstance(node, list):
        for item in node:
            yield from valueset_urls(item)


def referenced_valuesets(criteria: Mapping[str, Any], valuesets: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The ValueSets a criteria document reads, with those they include (``compose.include.valueSet``)."""
    found: set[str] = set()
    todo = list(valueset_urls(criteria))
    while todo:
        url = todo.pop()
        if url in found:
            continue
        found.add(url)
        for include in (valuesets.get(url) or {}).get("compose", {}).get("include", []):
            todo.extend(include.get("valueSet", []))
    return found


def coded_references(node: object) -> Iterator[tuple[str, str]]:
    """Every ``{"system", "code"}`` pair written in a criteria definition."""
    if isinstance(node, dict):
        if isinstance(node.get("system"), str) and isinstance(node.get("code"), str):
            yield node["system"], node["code"]
        for value in node.values():
            yield from coded_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from coded_references(item)


class CriteriaRegistry:
    """Criteria versions keyed by version; :meth:`newest` is the default for new assessments.

    Built from loaded :class:`Criteria` or from release directories: a directory's manifest names its
    version at once, and the release itself (hashes checked, terminology built) is loaded on first use, so
    a process that evaluates one version pays for that one only.
    """

    def __init__(self, criteria: Iterable[Criteria] = (), releases: Iterable[Traversable] = ()) -> None:
        self._by_version: dict[str, Criteria] = {}
        self._pending: dict[str, Traversable] = {}
        for c in criteria:
            self._claim(c.version)
            self._by_version[c.version] = c
        for directory in releases:
            version = _json(directory / MANIFEST, f"{directory.name}/{MANIFEST}").get("version")
            if not isinstance(version, str) or not version:
                raise CriteriaError(f"{directory.name}: the manifest names no version")
            self._claim(version)
            self._pending[version] = directory

    def _claim(self, version: str) -> None:
        if version in self._by_version or version in self._pending:
            raise CriteriaError(f"criteria version {version} defined twice")

    def get(self, version: str | None = None) -> Criteria:
        """The named version, or the newest release when ``version`` is None."""
        if version is None:
            return self.newest()
        if version in self._pending:
            criteria = load_release(self._pending[version])
            if criteria.version != version:
                raise CriteriaError(f"{criteria.source}: criteria.json is not version {version}")
            self._by_version[version] = criteria
            del self._pending[version]
        try:
            return self._by_version[version]
        except KeyError:
            known = ", ".join(self.versions()) or "none"
            raise CriteriaError(f"unknown criteria version {version!r} (known: {known})") from None

    def newest(self) -> Criteria:
        versions = self.versions()
        if not versions:
            raise CriteriaError("no criteria release is installed")
        return self.get(versions[-1])

    def versions(self) -> list[str]:
        """Known versions, oldest first (semantic version order)."""
        return sorted([*self._by_version, *self._pending], key=_version_key)

    def __contains__(self, version: object) -> bool:
        return version in self._by_version or version in self._pending

    def load_all(self) -> None:
        """Load every release now (a server checks them all at start; raises ``CriteriaError``)."""
        for version in list(self._pending):
            self.get(version)


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in version.split("."))


def _json(entry: Traversable, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(entry.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CriteriaError(f"{what}: cannot be read as JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise CriteriaError(f"{what}: not a JSON object")
    return data


def load_release(directory: Traversable) -> Criteria:
    """Load one sealed release directory, checking every file against its manifest."""
    name = directory.name
    manifest = _json(directory / MANIFEST, f"{name}/{MANIFEST}")
    hashes = manifest.get("sha256")
    if not isinstance(hashes, dict) or "criteria.json" not in hashes:
        raise CriteriaError(f"{name}: the manifest lists no files")
    present = {e.name for e in directory.iterdir() if e.name.endswith(".json")} - {MANIFEST}
    unlisted = sorted(present - set(hashes))
    if unlisted:
        raise CriteriaError(f"{name}: files not sealed in the release: {', '.join(unlisted)}")
    contents: dict[str, bytes] = {}
    for file, digest in sorted(hashes.items()):
        try:
            raw = (directory / file).read_bytes()
        except OSError:
            raise CriteriaError(f"{name}: sealed file {file} is missing") from None
        if hashlib.sha256(raw).hexdigest() != digest:
            raise CriteriaError(f"{name}: {file} changed after the release was sealed")
        contents[file] = raw
    data = orjson.loads(contents["criteria.json"])
    if not isinstance(data, dict) or data.get("format") not in SUPPORTED_FORMATS:
        raise CriteriaError(f"{name}: not a criteria definition of a supported format")
    if (data.get("url"), data.get("version")) != (manifest.get("url"), manifest.get("version")):
        raise CriteriaError(f"{name}: criteria.json is not the version the manifest names")
    pinned = {v["url"]: v["version"] for v in manifest.get("valuesets", [])}
    term_resources = [orjson.loads(raw) for file, raw in contents.items() if file != "criteria.json"]
    for res in term_resources:
        url = res.get("url")
        if res.get("resourceType") == "ValueSet" and pinned.get(url) != res.get("version"):
            raise CriteriaError(f"{name}: ValueSet {url} is not the version the release pins")
    findings = completed_findings(data)
    implicit = set(valueset_urls(list(findings))) - set(valueset_urls(data))
    own = {res.get("url") for res in term_resources}
    term_resources += [res for res in format_1_terminology() if res.get("url") in implicit - own]
    term = terminology.build(term_resources)
    wanted = referenced_valuesets(data, term.valuesets)
    unpinned = sorted(wanted - set(pinned))
    if unpinned:
        raise CriteriaError(f"{name}: ValueSet(s) read but not pinned: {', '.join(unpinned)}")
    term.require(wanted | implicit)
    return Criteria(data=data, terminology=term, source=name)


@functools.lru_cache(maxsize=1)
def format_1_terminology() -> tuple[dict[str, Any], ...]:
    """The ValueSets that :data:`FORMAT_1_DEFAULTS` name, each checked against the sha256 its manifest
    records: like a release, this reading data is sealed and never edited."""
    directory = shipped_releases() / FORMAT_1_TERMINOLOGY
    manifest = _json(directory / TERMINOLOGY_MANIFEST, f"{FORMAT_1_TERMINOLOGY}/{TERMINOLOGY_MANIFEST}")
    hashes = manifest.get("sha256")
    if not isinstance(hashes, dict) or not hashes:
        raise CriteriaError(f"{FORMAT_1_TERMINOLOGY}: the manifest lists no files")
    out = []
    for file, digest in sorted(hashes.items()):
        raw = (directory / file).read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest:
            raise CriteriaError(f"{FORMAT_1_TERMINOLOGY}: {file} changed after it was sealed")
        out.append(orjson.loads(raw))
    return tuple(out)


def _release_dirs(root: Traversable) -> list[Traversable]:
    if not root.is_dir():
        raise CriteriaError(f"criteria directory {root} does not exist")
    return sorted(
        (d for d in root.iterdir() if d.is_dir() and (d / MANIFEST).is_file()), key=lambda d: d.name
    )


def load_registry(extra_dirs: Sequence[Path | Traversable] = (), *, shipped: bool = True) -> CriteriaRegistry:
    """The shipped releases (unless ``shipped`` is False) plus the releases in ``extra_dirs``: each extra
    directory is a release itself or holds release directories."""
    roots: list[Traversable] = [shipped_releases()] if shipped else []
    found: list[Traversable] = []
    for root in roots:
        found.extend(_release_dirs(root))
    for extra in extra_dirs:
        directory = Path(extra) if isinstance(extra, str | os.PathLike) else extra
        found.extend([directory] if (directory / MANIFEST).is_file() else _release_dirs(directory))
    return CriteriaRegistry(releases=found)


@functools.lru_cache(maxsize=1)
def default_registry() -> CriteriaRegistry:
    """The shipped releases, loaded once per process."""
    return load_registry()
