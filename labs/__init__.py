"""Lab scenarios, the learner SDK and its widgets.  ``from labs import Lab``."""

from labs.sdk import CommandRefused, Lab, LabConnectionError

__all__ = ["Lab", "LabConnectionError", "CommandRefused"]
