"""The lab as it runs: ``lab`` (up/down/status/namespaces), the ``supervisor`` that owns the
``broker`` and the ``device`` processes, each device's ``link`` (profile latency, loss,
bandwidth) and ``outbox`` (windows kept until acknowledged).  Top of ``lab_hardware``:
nothing in ``lab_hardware.modelops`` or the shared formats imports it.
"""
