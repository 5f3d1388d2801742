"""The exception and warning types of turbogen's public API."""

from __future__ import annotations

__all__ = ["TurbogenFallbackWarning", "UnsupportedByTurbogen"]


class UnsupportedByTurbogen(ValueError):
    """A valid ``generate`` call that turbogen does not implement (a decoding method, a cache kind, a model
    kind, an argument), as opposed to an invalid argument.

    A ``ValueError`` subclass, so code that catches ``ValueError`` keeps working. A patched model
    (:func:`turbogen.patch`) catches exactly this type and runs the model's original ``generate`` instead;
    any other error propagates.

    Attributes:
        reason: a short, stable name of the missing feature (e.g. ``"inputs_embeds"``,
            ``"cache_implementation='offloaded'"``): the same for every call that needs that feature, so that
            callers can group refusals by it (the patched ``generate`` warns once per reason).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        # Keep `reason` across pickling (multiprocessing, Ray): the default would call __init__(message) only.
        return (_rebuild, (str(self), self.reason))


def _rebuild(message: str, reason: str) -> UnsupportedByTurbogen:
    return UnsupportedByTurbogen(message, reason=reason)


class TurbogenFallbackWarning(UserWarning):
    """A patched model's ``generate`` ran the model's original ``generate`` because turbogen refused the call
    (:class:`UnsupportedByTurbogen`). Issued once per process for each refusal reason; filter this category
    to silence or escalate it (``warnings.simplefilter("error", turbogen.TurbogenFallbackWarning)``)."""
