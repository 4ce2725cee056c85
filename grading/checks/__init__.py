"""livelab: grading/checks — named checks that judge what the lab really saw.

``run(name, home=, module=, ...)`` judges one check outside a grading run (the course
release gate uses it); grading runs use :mod:`grading.checks.base` directly.
"""

from .base import available, run  # noqa: F401
