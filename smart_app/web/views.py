"""Review page, focused-exam capture and write-back (blueprint ``main``).

DESIGN.md "One launch, end to end" steps 10-13: render the Assessment JSON (CONTRACT.md) inside the EHR
iframe, let the clinician record the focused exam (CLINICAL.md "Findings"), and write the drafts
(issue 4) with ``smart_app.writeback.write_drafts``. Every EHR-supplied string reaches the page through
Jinja autoescaping only.

One module per concern, all registering routes on the same blueprint ``bp`` (endpoints ``main.*``):

* ``smart_app.web.common`` - the blueprint object, session keys, per-launch state, FHIR client, helpers;
* ``smart_app.web.review`` - the review page (``/``, ``/review``): evidence, patient banner, criteria;
* ``smart_app.web.write`` - the write-back (``/writeback``, ``/draft.json``) and its outcome view;
* ``smart_app.web.exam`` - focused-exam capture (``/exam``, ``/exam/clear``) as Observations;
* ``smart_app.web.theme`` - the EHR's ``smart_style_url``, checked and served as ``/theme.css``.

Importing this module imports every route module, so ``views.bp`` always carries all the routes.
"""

from __future__ import annotations

from smart_app.web import exam, review, theme, write  # noqa: F401  (each registers its routes on bp)
from smart_app.web.common import bp

__all__ = ["bp"]
