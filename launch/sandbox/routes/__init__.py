"""Blueprints, one module per URL area: ``/.well-known``, ``/auth``, ``/fhir``, ``/ehr``."""
