"""Lab scenarios, the learner SDK and its widgets.  ``from labs import Lab``.

The device-side formats a learner works with are re-exported so notebooks need
one import: ``from labs import Lab, adapter, bundle, keys, replay, scrub``.  The learning-events
store (``labs.learning_events``) lives here too: learning events are what a learner does.
"""

from lab_hardware.modelops import adapter, bundle, keys, replay, scrub
from labs.sdk import CommandRefused, Lab, LabConnectionError

__all__ = ["Lab", "LabConnectionError", "CommandRefused", "adapter", "bundle", "keys", "replay", "scrub"]
