"""The exception and warning types deconflow raises at its public boundaries."""

from __future__ import annotations

__all__ = ["DeconflowError", "DeconflowWarning"]


class DeconflowError(ValueError):
    """Bad input or settings; the message says what is wrong and how to fix it.

    Subclasses :class:`ValueError` so that callers catching the standard type
    keep working.
    """


class DeconflowWarning(UserWarning):
    """Something was corrected or looks suspicious, but the run can go on."""
