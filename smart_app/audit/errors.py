"""The auditor tools' one error (docs/auditors.md#commands), apart from the report types so that the
command line can name it without loading them."""


class AuditInputError(Exception):
    """The input cannot be audited (exit status 2): a bad reference, unreadable export, unknown criteria."""
