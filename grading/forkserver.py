"""The Dask grading workers' fork server (multiprocessing ``forkserver`` with a preload).

``livelab grade`` starts its LocalCluster's worker processes as forks of one fork server
that imported :mod:`grading.worker_preload` (Dask's worker, papermill, nbclient, nbgrader's
preprocessors and gradebook API, the feedback exporter) once, instead of each worker being a
fresh interpreter that imports all of it again.  The fork server is a fresh single-threaded
interpreter (never a fork of the driver, whose threads could hold locks).

* :func:`start` begins the preload in the background as early as possible (the CLI calls it
  before it imports the rest of the grader, so both proceed on the two cores at once);
* :class:`configured` makes ``LocalCluster`` use it (Dask's own ``forkserver`` set-up would
  import every optional package it knows of, in the driver);
* :func:`stop` ends it with the cluster, so a long-lived process (the demo, the tests) never
  keeps a fork server with a stale environment; each worker's nanny applies the driver's
  current environment anyway (``env=``).

This module stays light: the CLI imports it first.
"""

from __future__ import annotations

import multiprocessing

#: imported once by the fork server
PRELOAD = ["grading.worker_preload"]


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the fork server now (it preloads in the background); no-op if it runs."""
    from multiprocessing import forkserver

    _context()
    forkserver.ensure_running()


class configured:
    """``with configured(): LocalCluster(...)``: its workers are forks of the fork server."""

    def __enter__(self):
        import dask
        from distributed import utils as dutils

        _context()
        dutils._forkserver_preload_set = True  # keep our preload list, not Dask's
        self._cfg = dask.config.set(
            {
                "distributed.worker.multiprocessing-method": "forkserver",
                # no statistical profiler: it samples every worker's stacks every 10 ms for a
                # dashboard the grader never serves (~1.5 % of a core per idle worker)
                "distributed.worker.profile.enabled": False,
                # housekeeping at most once a second: by default an idle scheduler, nanny and
                # worker check their event loop every 20 ms, sample psutil every 0.5 s and
                # memory every 0.1 s (0.11 of a core for an idle two-worker service, measured;
                # 0.04 with these).  Memory limits still hold, seen a second later at worst.
                "distributed.admin.tick.interval": "1s",
                "distributed.admin.system-monitor.interval": "1s",
                "distributed.worker.memory.monitor-interval": "1s",
            }
        )
        self._cfg.__enter__()
        return self

    def __exit__(self, *exc):
        self._cfg.__exit__(*exc)
        return False


def stop() -> None:
    """Stop the fork server (a new one starts with the next cluster).

    Its workers are gone by now and it holds nothing to save, so it gets SIGTERM first (its
    default action: no interpreter teardown of everything it preloaded, which took 0.38 s of
    every ``livelab grade``), then multiprocessing's own stop reaps it and removes its socket."""
    import os
    import signal
    from multiprocessing import forkserver

    fs = forkserver._forkserver
    pid = getattr(fs, "_forkserver_pid", None)
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    stop_ = getattr(fs, "_stop", None)
    if stop_ is not None:
        stop_()
