"""The simulated edge hardware and the formats a device speaks.

Three layers, imports flowing downward only (``tests/test_layers.py`` enforces it):

* ``lab_hardware.runtime``  - the one-node lab as it runs: broker supervisor, device processes,
  links, outboxes, and ``lab`` (up/down/status/namespaces).
* ``lab_hardware.modelops`` - the artifacts a team ships to devices and learns from: signed
  bundles and keys, install slots, adapters, the PII scrubber, replay captures and the sandbox.
* this package's own modules - the formats and plumbing both share: topics, MQTT helpers, the
  state directory, signal digests, consent trail, audit chain, features, inference sessions,
  aggregation windows and hardware profiles.

Released curriculum versions are immutable, and the notebooks of releases made before this
split import ``lab_hardware.bundle``, ``lab_hardware.replay`` and so on.  ``_MOVED`` maps those
old names to the modules' homes so such notebooks keep running unchanged; new code imports
the new names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: Old module name -> where it lives now (for released notebooks; see the module doc).
_MOVED = {
    **{
        f"lab_hardware.{m}": f"lab_hardware.modelops.{m}"
        for m in ("adapter", "bundle", "keys", "replay", "replay_sandbox", "scrub", "slots")
    },
    **{
        f"lab_hardware.{m}": f"lab_hardware.runtime.{m}"
        for m in ("broker", "device", "lab", "link", "outbox", "supervisor")
    },
    "lab_hardware.events": "labs.learning_events",
}


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # already executed under its new name
        pass


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        new = _MOVED.get(name)
        return importlib.util.spec_from_loader(name, _MovedLoader(new)) if new else None


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())


def __getattr__(name: str):
    """``from lab_hardware import bundle`` in a released notebook."""
    new = _MOVED.get(f"lab_hardware.{name}")
    if new is None:
        raise AttributeError(f"module 'lab_hardware' has no attribute {name!r}")
    return importlib.import_module(new)
