"""The app's names for things: canonical URLs, code systems, identifier systems and the code tables of its own
CodeSystems (docs/clinical-criteria.md#canonical-urls-and-code-systems).

The only source of these strings for drafting, the profiles, the audit tools and the pages. The displays of
the conclusion codes (classification, next step, red flag) are read once from the CodeSystems of the app's
FHIR package (``smart_app/data/profiles``), so a label is never restated in code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import orjson

CANONICAL = "https://smart-app.example/fhir"
CRITERIA_URL = f"{CANONICAL}/criteria/back-mice"

FINDING_SYSTEM = f"{CANONICAL}/CodeSystem/back-mice-finding"
RED_FLAG_SYSTEM = f"{CANONICAL}/CodeSystem/back-mice-red-flag"
CLASSIFICATION_SYSTEM = f"{CANONICAL}/CodeSystem/back-mice-classification"
NEXT_STEP_SYSTEM = f"{CANONICAL}/CodeSystem/back-mice-next-step"
WORKFLOW_SYSTEM = f"{CANONICAL}/CodeSystem/workflow"
WORKFLOW_CODE = "draft-requires-review"
WORKFLOW_DISPLAY = "Draft requires clinician review"
#: ``meta.tag`` of what a clinician entered through the app (the focused exam): not a draft of the app's.
ENTERED_CODE = "entered-through-app"

CLASSIFICATION_EXTENSION = f"{CANONICAL}/StructureDefinition/back-mice-classification"
NEXT_STEP_EXTENSION = f"{CANONICAL}/StructureDefinition/back-mice-next-step"
#: Complex extension on the assessment: one per resource type the app could not read.
UNAVAILABLE_EXTENSION = f"{CANONICAL}/StructureDefinition/back-mice-unavailable-data"
#: Extension on the Provenance of each write: the version of the app that concluded (valueString).
SOFTWARE_VERSION_EXTENSION = f"{CANONICAL}/StructureDefinition/back-mice-software-version"

DRAFT_IDENTIFIER_SYSTEM = f"{CANONICAL}/identifier/draft"
#: Identifiers of the exam Observations a clinician records through the app (and their Provenance's tag).
EXAM_IDENTIFIER_SYSTEM = f"{CANONICAL}/identifier/exam"
DEVICE_IDENTIFIER_SYSTEM = f"{CANONICAL}/identifier/device"
DEVICE_IDENTIFIER_VALUE = "smart-app-back-mice"
#: The literal reference the app's Device gets where the server keeps the id it was given.
APP_DEVICE = f"Device/{DEVICE_IDENTIFIER_VALUE}"

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
#: The category of exam Observations (R4 observation-category "exam").
EXAM_CATEGORY = {"system": OBSERVATION_CATEGORY, "code": "exam", "display": "Exam"}
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DETECTED_ISSUE_SEVERITY = "http://hl7.org/fhir/detectedissue-severity"

#: Short names of code systems for people reading evidence ("SNOMED 95325000 Subcutaneous nodule").
SYSTEM_LABELS = {
    SNOMED: "SNOMED",
    ICD10CM: "ICD-10-CM",
    LOINC: "LOINC",
    RXNORM: "RxNorm",
    CPT: "CPT",
}

#: HL7 AI transparency label carried by everything the app drafts (meta.security, Provenance.reason).
AIAST = {"system": V3_OBSERVATION_VALUE, "code": "AIAST", "display": "Artificial Intelligence asserted"}

#: Severity of the DetectedIssue written for a red flag of each level (docs/clinical-criteria.md#red-flags).
SEVERITY_OF_LEVEL = {"block": "high", "warn": "moderate"}
LEVEL_OF_SEVERITY = {"high": "block", "moderate": "warn", "low": "warn"}


def profile_url(resource_type: str) -> str:
    """Canonical URL of the app's profile for a resource type it writes."""
    return f"{CANONICAL}/StructureDefinition/back-mice-{resource_type.lower()}"


#: Profiles of what a clinician enters through the app (one resource type, a second profile).
EXAM_OBSERVATION_PROFILE = f"{CANONICAL}/StructureDefinition/back-mice-exam-observation"
EXAM_PROVENANCE_PROFILE = f"{CANONICAL}/StructureDefinition/back-mice-exam-provenance"


def system_label(system: str) -> str:
    return SYSTEM_LABELS.get(system, system.rsplit("/", 1)[-1])


#: The package's data files (criteria releases, the FHIR package). A wheel installs them beside the modules,
#: so they are read as plain files: ``importlib.resources`` would add ~10 ms to every command's start.
DATA_DIR = Path(__file__).parent / "data"


def profiles_package() -> Path:
    """The app's FHIR package (profiles, their ValueSets and CodeSystems), shipped as package data."""
    return DATA_DIR / "profiles"


@dataclass(frozen=True)
class CodeTable:
    """The concepts of one of the app's CodeSystems: ``code -> display`` and ``code -> definition``."""

    system: str
    displays: dict[str, str]
    definitions: dict[str, str]

    def __contains__(self, code: object) -> bool:
        return code in self.displays

    def display(self, code: str) -> str:
        return self.displays[code]

    def coding(self, code: str) -> dict[str, str]:
        """The ``Coding`` of ``code`` in this system (raises ``KeyError`` for a code it does not define)."""
        return {"system": self.system, "code": code, "display": self.displays[code]}

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(self.displays)


@functools.cache
def code_table(system: str) -> CodeTable:
    """The concepts of the app's CodeSystem ``system``, read once from the package."""
    for entry in profiles_package().iterdir():
        if not entry.name.startswith("CodeSystem-"):
            continue
        data = orjson.loads(entry.read_bytes())
        if data.get("url") == system:
            concepts = data.get("concept") or []
            return CodeTable(
                system=system,
                displays={c["code"]: c["display"] for c in concepts},
                definitions={c["code"]: c["definition"] for c in concepts if c.get("definition")},
            )
    raise KeyError(f"no CodeSystem {system} in the app's package")


def workflow() -> CodeTable:
    return code_table(WORKFLOW_SYSTEM)


def classifications() -> CodeTable:
    return code_table(CLASSIFICATION_SYSTEM)


def next_steps() -> CodeTable:
    return code_table(NEXT_STEP_SYSTEM)


def red_flags() -> CodeTable:
    return code_table(RED_FLAG_SYSTEM)
