"""Edge privacy filter: every face not in the consent registry is replaced before a frame leaves."""

__version__ = "0.1.0"
