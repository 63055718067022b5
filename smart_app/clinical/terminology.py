"""Terminology of a criteria release: its FHIR ValueSet and CodeSystem files, turned into matchers.

Codes live only in those files (docs/clinical-criteria.md#codes): this module turns each ValueSet's
``compose.include`` into a matcher. ``concept`` lists are exact ``system|code`` rules; a ``filter`` with
property ``concept`` and op ``is-a`` is read as a code-prefix rule (the ICD-10-CM hierarchy is positional,
so ``is-a Z85`` covers Z85 and every code below it). ICD-10-CM codes are compared without dots and in upper
case, so ``M54.50`` and ``M5450`` match alike. Other filters are refused at load time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TYPE_CHECKING = False  # true for type checkers only: see smart_app/__init__.py
if TYPE_CHECKING:
    from typing import Any

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ORDINAL_VALUE = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
_CACHE_LIMIT = 200_000


class TerminologyError(ValueError):
    """A terminology file the engine cannot read (unknown filter, missing ValueSet)."""


def normalise(system: str, code: str) -> str:
    """Comparison form of a code: ICD-10-CM without dots and upper case; others unchanged."""
    if system == ICD10CM:
        return code.replace(".", "").strip().upper()
    return code


@dataclass(slots=True)
class _Rules:
    exact: dict[str, set[str]] = field(default_factory=dict)  # system -> codes
    prefixes: dict[str, set[str]] = field(default_factory=dict)  # system -> prefixes
    whole: set[str] = field(default_factory=set)  # systems included entirely


@dataclass(frozen=True, slots=True)
class Terminology:
    """All ValueSets (by url, with resolved ``include.valueSet``) and CodeSystems of some directories."""

    valuesets: Mapping[str, Mapping[str, Any]]
    codesystems: Mapping[str, Mapping[str, Any]]
    _exact: Mapping[tuple[str, str], frozenset[str]]
    _prefix: Mapping[str, tuple[tuple[str, str], ...]]
    _whole: Mapping[str, frozenset[str]]
    ordinals: Mapping[tuple[str, str], float]
    displays: Mapping[tuple[str, str], str]
    broken: Mapping[str, str]
    _cache: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict, compare=False)

    def match(self, system: str, code: str) -> frozenset[str]:
        """ValueSet urls containing ``system|code`` (cached; linear reads stay cheap)."""
        key = (system, code)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        norm = normalise(system, code)
        found = set(self._exact.get((system, norm), ()))
        for prefix, url in self._prefix.get(system, ()):
            if norm.startswith(prefix):
                found.add(url)
        found.update(self._whole.get(system, ()))
        result = frozenset(found)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # bounded in a long-running server; refilled by use
        self._cache[key] = result
        return result

    def contains(self, url: str, system: str, code: str) -> bool:
        return url in self.match(system, code)

    def ordinal(self, system: str, code: str) -> float | None:
        """The ``ordinalValue`` a ValueSet concept carries (LOINC pain answers), if any."""
        return self.ordinals.get((system, code))

    def display(self, system: str, code: str) -> str | None:
        return self.displays.get((system, normalise(system, code)))

    def require(self, urls: Iterable[str]) -> None:
        wanted = sorted(set(urls))
        missing = [u for u in wanted if u not in self.valuesets]
        if missing:
            raise TerminologyError(f"ValueSet(s) not found: {', '.join(missing)}")
        broken = [f"{u}: {self.broken[u]}" for u in wanted if u in self.broken]
        if broken:
            raise TerminologyError("; ".join(broken))


def build(resources: Iterable[Mapping[str, Any]]) -> Terminology:
    """Build matchers from ValueSet and CodeSystem resources."""
    valuesets: dict[str, Mapping[str, Any]] = {}
    codesystems: dict[str, Mapping[str, Any]] = {}
    for res in resources:
        url = res.get("url")
        if not isinstance(url, str):
            continue
        if res.get("resourceType") == "ValueSet":
            valuesets[url] = res
        elif res.get("resourceType") == "CodeSystem":
            codesystems[url] = res

    rules: dict[str, _Rules] = {}
    ordinals: dict[tuple[str, str], float] = {}
    displays: dict[tuple[str, str], str] = {}

    def rules_of(url: str, seen: tuple[str, ...] = ()) -> _Rules:
        if url in rules:
            return rules[url]
        if url in seen:
            raise TerminologyError(f"ValueSet include cycle at {url}")
        vs = valuesets.get(url)
        if vs is None:
            raise TerminologyError(f"ValueSet not found: {url}")
        out = _Rules()
        compose = vs.get("compose") or {}
        for inc in compose.get("include", []):
            for other in inc.get("valueSet", []):
                sub = rules_of(other, (*seen, url))
                for s, codes in sub.exact.items():
                    out.exact.setdefault(s, set()).update(codes)
                for s, pre in sub.prefixes.items():
                    out.prefixes.setdefault(s, set()).update(pre)
                out.whole.update(sub.whole)
            system = inc.get("system")
            if not isinstance(system, str):
                continue
            concepts = inc.get("concept", [])
            filters = inc.get("filter", [])
            for c in concepts:
                code = normalise(system, c["code"])
                out.exact.setdefault(system, set()).add(code)
                if "display" in c:
                    displays[(system, code)] = c["display"]
                for ext in c.get("extension", []):
                    if ext.get("url") == ORDINAL_VALUE:
                        ordinals[(system, c["code"])] = float(ext["valueDecimal"])
            for f in filters:
                if f.get("property") != "concept" or f.get("op") != "is-a":
                    raise TerminologyError(f"{url}: unsupported filter {f!r}")
                out.prefixes.setdefault(system, set()).add(normalise(system, f["value"]))
            if not concepts and not filters:
                out.whole.add(system)
        rules[url] = out
        return out

    exact: dict[tuple[str, str], set[str]] = {}
    prefix: dict[str, list[tuple[str, str]]] = {}
    whole: dict[str, set[str]] = {}
    broken: dict[str, str] = {}
    for url in sorted(valuesets):
        try:
            r = rules_of(url)
        except (TerminologyError, KeyError, TypeError, ValueError) as exc:
            broken[url] = str(exc)
            continue
        for system, codes in r.exact.items():
            for code in codes:
                exact.setdefault((system, code), set()).add(url)
        for system, prefixes in r.prefixes.items():
            prefix.setdefault(system, []).extend((p, url) for p in sorted(prefixes))
        for system in r.whole:
            whole.setdefault(system, set()).add(url)
    for cs_url, cs in codesystems.items():
        for c in cs.get("concept", []):
            if "display" in c:
                displays.setdefault((cs_url, c["code"]), c["display"])
    return Terminology(
        valuesets=valuesets,
        codesystems=codesystems,
        _exact={k: frozenset(v) for k, v in exact.items()},
        _prefix={k: tuple(v) for k, v in prefix.items()},
        _whole={k: frozenset(v) for k, v in whole.items()},
        ordinals=ordinals,
        displays=displays,
        broken=broken,
    )
