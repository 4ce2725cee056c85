"""ModelOps artifacts: what a team builds, signs, ships to devices and learns from.

``bundle`` (signed model bundles), ``keys`` (signing keys and trust stores), ``slots`` (a
device's atomic install, health check and rollback), ``adapter`` (small per-intent
corrections), ``scrub`` (on-device PII scrubbing), ``replay`` and ``replay_sandbox``
(consented captures, replay files and their network-less runs).  Imports only the shared
formats of ``lab_hardware``; the runtime imports this, never the reverse.
"""
