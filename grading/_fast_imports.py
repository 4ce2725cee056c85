"""Import-time savings for grading processes (imported first by the grading modules).

``jsonschema`` (through ``nbformat``) imports ``rfc3987_syntax`` when it is installed, which
builds an Earley parser for RFC 3987 at import: about 1 s in every process that touches a
notebook.  Notebook schemas never use the ``iri``/``iri-reference`` formats that parser
serves, so grading processes (the driver and each worker) mark it unavailable, exactly as
if it were not installed: jsonschema then skips those two format checks.  Kernels are not
affected (they never import this module).
"""

import sys

sys.modules.setdefault("rfc3987_syntax", None)
