"""Typed exceptions for everything a user can cause.

The CLI turns any :class:`MeltError` into one line on stderr and exit code 2; library users catch
the specific subclass.
"""


class MeltError(Exception):
    """Base class of every error a user can cause (bad input, bad config, missing plugin)."""


class BundleError(MeltError):
    """A bundle directory or one of its frames is missing, unreadable or violates the schema."""


class ConfigError(MeltError):
    """A configuration file has an unknown key, a wrong type or an invalid value."""


class PluginError(MeltError):
    """A detector plugin is unknown, failed to import, or cannot run on the given data."""


class NotFittedError(MeltError):
    """A detector was asked to score or save before it was fitted."""


class ReportError(MeltError):
    """A report does not validate against ``melt/schemas/report.schema.json``."""


class DeliveryError(MeltError):
    """A sink could not deliver; for the webhook, the reports are in the spool when this is raised."""


class SourceError(MeltError):
    """An import source is missing or unreadable, or (with ``strict``) holds a bad row."""
