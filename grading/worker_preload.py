"""What a Dask grading worker needs, imported once in the workers' fork server.

``livelab grade`` starts its LocalCluster's worker processes with multiprocessing's
``forkserver`` method and this module as the fork server's preload: the server imports
Dask's worker, papermill, nbclient, nbgrader's preprocessors and gradebook API, and renders
a feedback page once (nbconvert template loading and compilation); each worker is then a fork of it,
ready in milliseconds, instead of a fresh interpreter importing all of that again (about
2 s of CPU per worker on the 2-core reference machine, measured: bench/grading.py).

The fork server is a fresh, single-threaded interpreter (not a fork of the driver, whose
threads could hold locks), started and stopped with the cluster (grading.batch).
"""

from . import _fast_imports  # noqa: F401  (first: see its docstring)

import distributed.nanny  # noqa: F401,E402
import distributed.worker  # noqa: F401,E402
import nbclient  # noqa: F401,E402
import nbformat  # noqa: F401,E402
import papermill  # noqa: F401,E402
import nbgrader.api  # noqa: F401,E402
import nbgrader.preprocessors  # noqa: F401,E402

from . import batch, engine, feedback, runner  # noqa: F401,E402

# the first render compiles nbconvert's and nbgrader's feedback templates: do it here, once
feedback.render(
    nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("warm-up"),
            nbformat.v4.new_code_cell(
                "1",
                metadata={"nbgrader": {"grade": True, "grade_id": "t", "points": 1}},
                outputs=[nbformat.v4.new_output("stream", name="stdout", text="1\n")],
            ),
        ]
    ),
    {"score": 0.0, "max_score": 1.0, "notebook": "warm-up", "cells": [], "messages": []},
)

# what the fork server loaded is kept for the workers' lifetime: out of the collector's reach
# (each worker's full collections would walk it and copy its pages; see batch.freeze_heap)
batch.freeze_heap()
