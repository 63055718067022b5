"""Review page, focused-exam capture, write-back and the app's own view of what it wrote (blueprint
``main``; docs/architecture.md#web).

One module per concern, all registering routes on the same blueprint ``bp`` (endpoints ``main.*``):

* ``smart_app.web.common`` - the blueprint object, the small per-launch session state, the review run,
  the patient banner;
* ``smart_app.web.review`` - the review page (``/``, ``/review``);
* ``smart_app.web.exam`` - focused-exam capture (``/exam``, ``/exam/confirm``, ``/exam/clear``);
* ``smart_app.web.write`` - the write-back (``/writeback``, ``/draft.json``), its outcome page and what of
  the assessment is already in the chart (``/write-status``);
* ``smart_app.web.chart`` - a resource the app wrote, shown in the app (``/chart/<type>/<id>``);
* ``smart_app.web.theme`` - the EHR's ``smart_style_url``, checked and served as ``/theme.css``.

Importing this module imports every route module, so ``views.bp`` always carries all the routes.
"""

from __future__ import annotations

from smart_app.web import chart, exam, review, theme, write  # noqa: F401  (each registers its routes on bp)
from smart_app.web.common import bp

__all__ = ["bp"]
