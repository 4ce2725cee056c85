"""The lab's Flower server for a federated adapter round (a process of its own).

``python -m labs.federated_server --config CONFIG.json --out RESULT.json``: started by
``labs.federated.run_round`` once it knows which devices joined.  It runs Flower's gRPC server
(``flwr.server.start_server``: the gRPC-bidi Fleet API, no Ray, no simulation) on
``127.0.0.1:PORT`` for ``rounds`` rounds of FedAvg over exactly ``clients`` devices, wrapped in
Flower's :class:`DifferentialPrivacyServerSideFixedClipping`: each device's update (its new
bias minus the round's) is clipped to ``clipping_norm`` on the server, the clipped updates are
averaged (every device weighs the same), and Gaussian noise of standard deviation
``noise_multiplier * clipping_norm / clients`` is added to the mean - central DP, at
aggregation only.  Devices never see one another's updates.

It writes the final bias and, per round, who took part, their update norms before clipping
and the noise's standard deviation (Flower's own ``compute_stdv``) to RESULT.json, and exits 0;
anything else exits 1 with one line on stderr.  A process of its own because Flower's server
installs signal handlers (main thread only) and so the lab can stop it by its pid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def serve(cfg: dict[str, Any]) -> dict[str, Any]:
    import flwr.server
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
    from flwr.supercore.differential_privacy import compute_stdv

    logging.getLogger("flwr").setLevel(logging.ERROR)  # not its deprecation notices
    n = int(cfg["clients"])
    sigma, clip = float(cfg["noise_multiplier"]), float(cfg["clipping_norm"])
    # The noise is drawn from numpy's global generator (Flower's add_gaussian_noise_to_params):
    # fresh OS entropy unless a test pins it (a pinned seed is reproducible, and no privacy).
    np.random.seed(cfg["seed"] if cfg.get("seed") is not None else int.from_bytes(os.urandom(4), "little"))
    initial = [np.asarray(cfg["initial"], dtype=np.float64)]
    rounds: list[dict[str, Any]] = []
    final: dict[str, Any] = {"parameters": list(initial[0])}

    class Strategy(DifferentialPrivacyServerSideFixedClipping):
        def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
            info: dict[str, Any] = {"round": server_round, "participants": [], "update_norms": {}, "signals": {}}
            for _, res in results:
                dev = str(res.metrics.get("device", "?"))
                upd = [p - c for p, c in zip(parameters_to_ndarrays(res.parameters), self.current_round_params)]
                info["participants"].append(dev)
                info["update_norms"][dev] = round(float(np.sqrt(sum(float((u**2).sum()) for u in upd))), 6)
                info["signals"][dev] = int(res.metrics.get("signals", 0))
            info["failures"] = len(failures)
            params, metrics = super().aggregate_fit(server_round, results, failures)
            if params is not None:
                final["parameters"] = [float(v) for v in parameters_to_ndarrays(params)[0]]
                info["noise_stdv"] = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
            info["bias"] = list(final["parameters"])
            rounds.append(info)
            return params, metrics

    fedavg = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_evaluate_clients=0,
        min_available_clients=n,
        initial_parameters=ndarrays_to_parameters(initial),
        accept_failures=False,
    )
    strategy = Strategy(fedavg, noise_multiplier=sigma, clipping_norm=clip, num_sampled_clients=n)
    t0 = time.perf_counter()
    flwr.server.start_server(
        server_address=f"127.0.0.1:{int(cfg['port'])}",
        config=flwr.server.ServerConfig(num_rounds=int(cfg["rounds"]), round_timeout=float(cfg["round_timeout"])),
        strategy=strategy,
    )
    done = [r for r in rounds if "noise_stdv" in r]
    if len(done) != int(cfg["rounds"]):
        failed = next((r for r in rounds if "noise_stdv" not in r), None)
        why = f"{failed['failures']} device(s) failed in round {failed['round']}" if failed else "no round completed"
        raise RuntimeError(f"the federated round did not complete: {why}")
    return {"parameters": final["parameters"], "rounds": rounds, "seconds": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m labs.federated_server", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="round config JSON written by labs.federated")
    p.add_argument("--out", required=True, help="where to write the result JSON")
    args = p.parse_args(argv)
    try:
        cfg = json.loads(Path(args.config).read_text())
        result = serve(cfg)
    except Exception as exc:  # noqa: BLE001 - one line for the caller
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        print(f"federated server: {first}", file=sys.stderr)
        return 1
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, sort_keys=True))
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
