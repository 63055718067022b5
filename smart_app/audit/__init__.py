"""Auditor tools (docs/auditors.md): find what the app wrote (:mod:`.listing`), trace it to its evidence,
and reproduce each conclusion (:mod:`.verify`), from a FHIR server or an export (:mod:`.source`); the command
line is :mod:`.cli`. No Flask: the audit page is in ``smart_app.web``. Importing the package loads none of
its modules, so the command line starts fast."""
