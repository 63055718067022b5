"""A small checker for the app's own profiles (its FHIR package, ``smart_app/data/profiles``), driven by
their snapshots.

FHIR R4 profiling.html and elementdefinition.html: for every element of the profile's snapshot it checks
cardinality (``min``/``max``), the allowed choice types, ``fixed[x]`` (exact) and ``pattern[x]``
(the instance contains the pattern), ``required`` bindings to the package's own ValueSets (expanded
from the package files), and the resource types of references against ``targetProfile``. Elements the
snapshot does not know are reported too. Structural validity against base R4 is checked beside it, by
:mod:`smart_app.drafts.r4`. Pure: no HTTP.

Extensions (extensibility.html): an extension whose ``url`` is one of the package's extension definitions
is checked against that definition (its context included); one with the package's canonical base but no
definition is reported. Slices (profiling.html#slicing) are supported as the package uses them: extension
slices discriminated by ``url`` (value), each counted against its own cardinality.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from smart_app.fhirjson import Ref
from smart_app.vocabulary import CANONICAL, profiles_package

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_FHIR_SD = "http://hl7.org/fhir/StructureDefinition/"


@dataclass(frozen=True)
class ProfileIssue:
    """One failed rule: ``path`` is the instance path (e.g. ``ServiceRequest.note``)."""

    path: str
    message: str
    profile: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _max(value: str) -> float:
    return float("inf") if value == "*" else float(value)


def _contains(pattern: Any, value: Any) -> bool:
    """elementdefinition-definitions.html#ElementDefinition.pattern_x_: every property of the pattern
    is in the value; a pattern array's items must each match some item of the value's array."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and _contains(v, value[k]) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_contains(p, v) for v in value) for p in pattern)
    return bool(pattern == value)


def _fixed_or_pattern(element: Mapping[str, Any]) -> tuple[str, Any] | None:
    for key, value in element.items():
        if key.startswith("fixed") or key.startswith("pattern"):
            return key, value
    return None


class ProfileChecker:
    """The package's profiles and ValueSets, loaded once; :meth:`check` validates one resource."""

    def __init__(self, package_dir: Traversable | None = None) -> None:
        package_dir = package_dir if package_dir is not None else profiles_package()
        self.package_dir = package_dir
        self.profiles: dict[str, dict[str, Any]] = {}
        self._children: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._value_sets: dict[str, dict[str, Any]] = {}
        self._code_systems: dict[str, dict[str, Any]] = {}
        self.profile_types: dict[str, str] = {}
        #: The package's extension definitions by url (a subset of :attr:`profiles`).
        self.extensions: dict[str, dict[str, Any]] = {}
        for entry in sorted(package_dir.iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".json"):
                continue
            data = orjson.loads(entry.read_bytes())
            kind = data.get("resourceType") if isinstance(data, dict) else None
            if kind == "StructureDefinition" and "snapshot" in data:
                self.profiles[data["url"]] = data
                self.profile_types[data["url"]] = data["type"]
                children: dict[str, list[dict[str, Any]]] = {}
                for element in data["snapshot"]["element"]:
                    # by element id, so the children of each slice stay apart (profiling.html#slicing)
                    parent, _, _ = element["id"].rpartition(".")
                    if parent:
                        children.setdefault(parent, []).append(element)
                self._children[data["url"]] = children
                if data["type"] == "Extension":
                    self.extensions[data["url"]] = data
            elif kind == "ValueSet":
                self._value_sets[data["url"]] = data
            elif kind == "CodeSystem":
                self._code_systems[data["url"]] = data
        self._expansions: dict[str, frozenset[tuple[str, str]]] = {}

    def expand(self, url: str) -> frozenset[tuple[str, str]] | None:
        """``(system, code)`` pairs of one of the package's ValueSets (compose.include with concepts,
        or a whole CodeSystem of the package); None when the ValueSet is not the package's."""
        url = url.split("|", 1)[0]
        if url in self._expansions:
            return self._expansions[url]
        value_set = self._value_sets.get(url)
        if value_set is None:
            return None
        pairs: set[tuple[str, str]] = set()
        for include in value_set.get("compose", {}).get("include", []):
            system = include.get("system", "")
            if "concept" in include:
                pairs.update((system, c["code"]) for c in include["concept"])
            elif system in self._code_systems:
                pairs.update(
                    (system, code) for code in _all_codes(self._code_systems[system].get("concept", []))
                )
        result = frozenset(pairs)
        self._expansions[url] = result
        return result

    def check(
        self,
        resource: Mapping[str, Any],
        *,
        profile: str | None = None,
        resolve: Mapping[str, str] | None = None,
    ) -> list[ProfileIssue]:
        """Issues of ``resource`` against ``profile`` (default: the package profiles it claims in
        ``meta.profile``; claiming none is itself an issue). ``resolve`` maps Bundle fullUrls
        (``urn:uuid:…``) to resource types, for references inside a transaction."""
        rtype = str(resource.get("resourceType", "?"))
        if profile is not None:
            urls = [profile]
        else:
            claimed = (resource.get("meta") or {}).get("profile") or []
            urls = [u.split("|", 1)[0] for u in claimed if u.split("|", 1)[0] in self.profiles]
            if not urls:
                return [ProfileIssue(f"{rtype}.meta.profile", "claims none of the package's profiles", "")]
        issues: list[ProfileIssue] = []
        for url in urls:
            sd = self.profiles.get(url)
            if sd is None:
                issues.append(ProfileIssue(rtype, f"unknown profile {url}", url))
                continue
            if sd["type"] != rtype:
                issues.append(ProfileIssue(rtype, f"profile {url} is for {sd['type']}", url))
                continue
            issues.extend(_Walk(self, url, resolve or {}).run(resource, sd["type"]))
        return issues

    def children(self, url: str, element_id: str) -> list[dict[str, Any]]:
        """The snapshot elements directly under the element with id ``element_id`` (slices included)."""
        return self._children[url].get(element_id, [])


def _all_codes(concepts: list[dict[str, Any]]) -> Iterator[str]:
    for concept in concepts:
        yield concept["code"]
        yield from _all_codes(concept.get("concept", []))


class _Walk:
    def __init__(self, checker: ProfileChecker, url: str, resolve: Mapping[str, str]) -> None:
        self.checker = checker
        self.url = url
        self.resolve = resolve
        self.issues: list[ProfileIssue] = []

    def issue(self, path: str, message: str) -> None:
        self.issues.append(ProfileIssue(path, message, self.url))

    def run(self, resource: Mapping[str, Any], root: str) -> list[ProfileIssue]:
        return self.run_at(resource, root, root)

    def run_at(self, node: Mapping[str, Any], root: str, instance_path: str) -> list[ProfileIssue]:
        """Check ``node`` against the profile's root element ``root``, reporting at ``instance_path``."""
        if not isinstance(node, Mapping):
            self.issue(instance_path, "not an object")
            return self.issues
        self.node(node, root, instance_path)
        return self.issues

    def node(self, node: Mapping[str, Any], element_path: str, instance_path: str) -> None:
        known: set[str] = {"resourceType"} if "." not in element_path else set()
        choices: list[str] = []
        children = self.checker.children(self.url, element_path)
        for element in children:
            name = element["path"].rsplit(".", 1)[1]
            if element.get("sliceName"):
                self.slice(element, node.get(name), instance_path)
                continue
            if (element.get("slicing") or {}).get("rules") == "closed":
                self.closed(element, children, node.get(name), instance_path)
            if name.endswith("[x]"):
                prefix = name[:-3]
                choices.append(prefix)
                keys = [
                    k for k in node if k.startswith(prefix) and k[len(prefix) : len(prefix) + 1].isupper()
                ]
            else:
                known.add(name)
                keys = [name] if name in node else []
            values: list[tuple[str, Any]] = []
            for key in keys:
                raw = node[key]
                values.extend((key, v) for v in (raw if isinstance(raw, list) else [raw]))
            self.element(element, values, instance_path, len(keys))
        for key in node:
            bare = key[1:] if key.startswith("_") else key
            if bare in known or any(
                bare.startswith(p) and bare[len(p) : len(p) + 1].isupper() for p in choices
            ):
                continue
            self.issue(f"{instance_path}.{key}", "element not allowed here (not in the profile's snapshot)")

    def slice_urls(self, element: Mapping[str, Any]) -> set[str]:
        """The extension urls a slice matches: its type's profile, or (a sub-extension of a complex
        extension) the url fixed on the slice's ``url`` child."""
        urls = {p.split("|", 1)[0] for t in element.get("type", []) for p in t.get("profile", [])}
        if not urls:
            urls = {
                str(child["fixedUri"])
                for child in self.checker.children(self.url, element["id"])
                if child["path"].endswith(".url") and isinstance(child.get("fixedUri"), str)
            }
        return urls

    def closed(
        self, element: Mapping[str, Any], siblings: list[dict[str, Any]], raw: Any, parent_path: str
    ) -> None:
        """Closed slicing (profiling.html#slicing, rules ``closed``): every item matches a slice."""
        name = element["path"].rsplit(".", 1)[1]
        allowed: set[str] = set()
        for sibling in siblings:
            if sibling.get("sliceName") and sibling["path"] == element["path"]:
                allowed |= self.slice_urls(sibling)
        items = raw if isinstance(raw, list) else [] if raw is None else [raw]
        for index, item in enumerate(items):
            url = item.get("url") if isinstance(item, dict) else None
            if url not in allowed:
                self.issue(
                    f"{parent_path}.{name}[{index}]",
                    f"{url!r} matches no slice (closed slicing; allowed: {', '.join(sorted(allowed))})",
                )

    def slice(self, element: Mapping[str, Any], raw: Any, parent_path: str) -> None:
        """One slice of an extension array (discriminator ``value:url``): its cardinality and rules
        apply to the extensions whose url is the slice's extension definition."""
        name = element["path"].rsplit(".", 1)[1]
        urls = self.slice_urls(element)
        if not urls:
            self.issue(f"{parent_path}.{name}:{element['sliceName']}", "slice without a profile: not checked")
            return
        items = raw if isinstance(raw, list) else [] if raw is None else [raw]
        values = [(name, v) for v in items if isinstance(v, dict) and v.get("url") in urls]
        self.element(element, values, parent_path, 1, label=f"{name}:{element['sliceName']}")

    def extension(self, path: str, element_path: str, value: Any) -> None:
        """An extension with the package's canonical base: checked against its definition."""
        url = value.get("url") if isinstance(value, dict) else None
        if not isinstance(url, str) or not url.startswith(f"{CANONICAL}/"):
            return
        definition = self.checker.extensions.get(url)
        if definition is None:
            self.issue(path, f"unknown extension {url} (not defined in the package)")
            return
        context = element_path.rsplit(".", 1)[0]
        allowed = [
            str(c.get("expression"))
            for c in definition.get("context", [])
            if isinstance(c, dict) and c.get("type") == "element"
        ]
        if context not in allowed:
            self.issue(path, f"extension {url} is not allowed on {context}; allowed: {', '.join(allowed)}")
        self.issues.extend(_Walk(self.checker, url, self.resolve).run_at(value, "Extension", path))

    def element(
        self,
        element: Mapping[str, Any],
        values: list[tuple[str, Any]],
        parent_path: str,
        key_count: int,
        label: str | None = None,
    ) -> None:
        name = element["path"].rsplit(".", 1)[1]
        path = f"{parent_path}.{label or name}"
        if key_count > 1:
            self.issue(path, "more than one choice type given")
        count = len(values)
        if count < element.get("min", 0):
            self.issue(path, f"at least {element['min']} required, found {count}")
        if count > _max(element.get("max", "*")):
            self.issue(path, f"at most {element['max']} allowed, found {count}")
        rule = _fixed_or_pattern(element)
        types = element.get("type", [])
        repeating = element.get("max", "*") != "1"
        for index, (key, value) in enumerate(values):
            here = f"{parent_path}.{label or key}" + (f"[{index}]" if repeating else "")
            type_code = self.type_of(name, key, types)
            if type_code is None:
                self.issue(here, f"type not allowed; allowed: {', '.join(t['code'] for t in types)}")
                continue
            if rule is not None:
                rule_key, expected = rule
                ok = value == expected if rule_key.startswith("fixed") else _contains(expected, value)
                if not ok:
                    kind = "fixed value" if rule_key.startswith("fixed") else "pattern"
                    self.issue(here, f"does not match the {kind} {json.dumps(expected, ensure_ascii=False)}")
            binding = element.get("binding") or {}
            if binding.get("strength") == "required" and binding.get("valueSet"):
                self.binding(here, binding["valueSet"], type_code, value)
            if type_code == "Reference":
                self.reference(here, value, types)
            if type_code == "Extension" and not element.get("sliceName"):
                self.extension(here, element["path"], value)
            if (
                isinstance(value, dict)
                and self.checker.children(self.url, element["id"])
                and not element.get("contentReference")
            ):
                self.node(value, element["id"], here)

    @staticmethod
    def type_of(name: str, key: str, types: list[dict[str, Any]]) -> str | None:
        if not name.endswith("[x]"):
            return str(types[0]["code"]) if types else "BackboneElement"
        suffix = key[len(name) - 3 :]
        for t in types:
            code = str(t["code"])
            if code[:1].upper() + code[1:] == suffix:
                return code
        return None

    def binding(self, path: str, value_set: str, type_code: str, value: Any) -> None:
        expansion = self.checker.expand(value_set)
        if expansion is None:
            return
        if type_code == "code":
            ok = isinstance(value, str) and any(code == value for _, code in expansion)
        elif type_code == "Coding":
            ok = isinstance(value, dict) and (value.get("system"), value.get("code")) in expansion
        elif type_code == "CodeableConcept":
            codings = value.get("coding", []) if isinstance(value, dict) else []
            ok = any((c.get("system"), c.get("code")) in expansion for c in codings if isinstance(c, dict))
        else:
            return
        if not ok:
            self.issue(path, f"not in the required value set {value_set}")

    def reference(self, path: str, value: Any, types: list[dict[str, Any]]) -> None:
        allowed = {
            self.checker.profile_types.get(p, p.removeprefix(_FHIR_SD))
            for t in types
            for p in t.get("targetProfile", [])
        }
        if not allowed or "Resource" in allowed or not isinstance(value, dict):
            return
        ref = value.get("reference")
        if not isinstance(ref, str):
            return
        target = self.resolve.get(ref)
        if target is None:
            parsed = Ref.parse(ref)
            if parsed is None:
                self.issue(path, f"reference {ref!r} cannot be resolved to a resource type")
                return
            target = parsed.type
        if target not in allowed:
            self.issue(path, f"reference to {target} not allowed; allowed: {', '.join(sorted(allowed))}")


@lru_cache(maxsize=4)
def load_checker(package_dir: Traversable | None = None) -> ProfileChecker:
    """The checker for the package, cached (the package files do not change while running)."""
    return ProfileChecker(package_dir)


def check_bundle(bundle: Mapping[str, Any], checker: ProfileChecker | None = None) -> list[ProfileIssue]:
    """Issues of every entry resource of a (transaction) Bundle, with ``urn:uuid`` fullUrls resolved.
    Paths are prefixed with ``Bundle.entry[i].resource``."""
    checker = checker or load_checker()
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
    resolve = {
        str(e["fullUrl"]): str(e["resource"].get("resourceType"))
        for e in entries
        if isinstance(e.get("resource"), dict) and e.get("fullUrl")
    }
    issues: list[ProfileIssue] = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            issues.append(ProfileIssue(f"Bundle.entry[{index}]", "no resource", ""))
            continue
        for issue in checker.check(resource, resolve=resolve):
            issues.append(
                ProfileIssue(f"Bundle.entry[{index}].resource/{issue.path}", issue.message, issue.profile)
            )
    return issues
