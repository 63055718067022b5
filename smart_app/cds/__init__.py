"""CDS Hooks 2.0 service (https://cds-hooks.hl7.org/2.0/; docs/cds-hooks.md): the same criteria, engine and
drafts as the SMART app, offered to an EHR as cards on ``patient-view`` and ``order-sign``.

No Flask here: :mod:`smart_app.web.cds` binds these modules to HTTP.

- :mod:`~smart_app.cds.discovery`: the services and the discovery document;
- :mod:`~smart_app.cds.clients`: CDS client registrations (``"kind": "cds-client"`` files);
- :mod:`~smart_app.cds.auth`: the CDS client's JWT (signature, ``iss``, ``aud``, ``exp``, ``jti`` replay);
- :mod:`~smart_app.cds.request`: the hook request, checked;
- :mod:`~smart_app.cds.prefetch`: prefetch templates and prefetched data as a read record;
- :mod:`~smart_app.cds.cards`: the card rules over the Assessment JSON;
- :mod:`~smart_app.cds.actions`: the write-back drafts as suggestion actions;
- :mod:`~smart_app.cds.service`: one hook call, request to response;
- :mod:`~smart_app.cds.feedback`: feedback on cards, for the audit log.
"""
