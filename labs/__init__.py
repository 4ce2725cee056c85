"""Lab scenarios, the learner SDK and its widgets.  ``from labs import Lab``.

The device-side formats a learner works with are re-exported so notebooks need
one import: ``from labs import Lab, bundle, keys, replay, scrub``.
"""

from lab_hardware import bundle, keys, replay, scrub
from labs.sdk import CommandRefused, Lab, LabConnectionError

__all__ = ["Lab", "LabConnectionError", "CommandRefused", "bundle", "keys", "replay", "scrub"]
