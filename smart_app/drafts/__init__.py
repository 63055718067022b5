"""The written format, both ways: build the drafts the app writes (:mod:`.build`, :mod:`.provenance`),
check them against the app's own profiles (:mod:`.profiles`), and read a written conclusion back for the
auditor (:mod:`.readback`). :mod:`.written` is the table of written types. No Flask, no HTTP.
"""
