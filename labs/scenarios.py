"""Lab scenarios: a seeded stream plus the models devices run against it.

A scenario is a hyphenated sub-folder of ``labs/`` holding a
``scenario.toml`` (and its model files).  It is content, not code, so the
file is validated strictly here: a typo in a key would otherwise silently
fall back to a default and the lab would run a different experiment than the
course describes.  Device processes never import this module; they get the
plain dict from :meth:`Scenario.materialize` and read files.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from labs import streams

SCENARIOS_DIR = Path(__file__).parent
SCENARIO_FILE = "scenario.toml"


class ScenarioError(ValueError):
    """A scenario that does not exist or whose scenario.toml is malformed (one-line message)."""


# key -> (type(s), required).  float fields accept ints (TOML `50` vs `50.0`).
_TOP: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, True),
    "description": (str, True),
    "stream": (str, True),
    "seed": (int, True),
    "stream_length": (int, True),
    "pii_fraction": ((int, float), True),
    "intents": (list, True),
    "defect_intent": (str, True),
    "rate_hz": ((int, float), True),
    "window_seconds": ((int, float), True),
    "models": (dict, True),
    "devices": (dict, True),
    "training": (dict, False),
    "oracle": (dict, False),
}
_DEVICES: dict[str, tuple[type | tuple[type, ...], bool]] = {"models": (list, True)}
_TRAINING: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "seed": (int, True),
    "n": (int, True),
    "C": ((int, float), True),
    "max_iter": (int, True),
    "defect_prefix": (str, True),
    "eval_n": (int, True),
}
_ORACLE: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "model": (str, True),
    "seed": (int, True),
    "n": (int, True),
    "C": ((int, float), True),
    "max_iter": (int, True),
}


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; paths are absolute so it can be used from any cwd."""

    name: str
    root: Path
    description: str
    seed: int
    stream_length: int
    pii_fraction: float
    intents: tuple[str, ...]
    defect_intent: str
    rate_hz: float
    window_seconds: float
    models: dict[str, Path]
    device_models: tuple[str, ...]
    raw: dict[str, Any]
    #: the lab oracle's model (``[oracle] model``), a larger central model; None if the scenario has none
    oracle_model: Path | None = None

    @property
    def stream_name(self) -> str:
        """Name of the generator function in labs/streams.py."""
        return self.raw["stream"]

    def stream(self, n: int | None = None) -> list[dict]:
        """The scenario's utterances (the first ``n``, default ``stream_length``).

        Streams are prefix-stable, so ``stream(k)`` is what a device has seen
        after ``k`` utterances of the full stream.
        """
        fn: Callable[..., list[dict]] = getattr(streams, self.stream_name)
        count = self.stream_length if n is None else n
        return fn(self.seed, count, pii_fraction=self.pii_fraction)

    @property
    def scrubbed_stream_path(self) -> Path:
        """The stream, scrubbed, as shipped with the scenario (``write_scrubbed_stream``)."""
        return self.root / "stream.scrubbed.jsonl.gz"

    def write_scrubbed_stream(self) -> Path:
        """Scrub the whole stream with this scrubber and ship it beside scenario.toml, so devices
        need not load Presidio to scrub the same utterances again (see ``scrub.fingerprint``)."""
        import hashlib
        import tempfile

        from lab_hardware.modelops import scrub

        with tempfile.TemporaryDirectory() as tmp:
            stream = streams.write_jsonl(self.stream(), Path(tmp) / "stream.jsonl")
            sha = hashlib.sha256(stream.read_bytes()).hexdigest()
            texts = [json.loads(line)["text"] for line in stream.read_text(encoding="utf-8").splitlines()]
        scrub.write_scrubbed_stream(texts, sha, self.scrubbed_stream_path, scenario=self.name)
        return self.scrubbed_stream_path

    def materialize(self, dest: Path) -> dict:
        """Write ``dest/stream.jsonl`` and return the device configuration dict.

        Devices are separate processes that must not import ``labs``: they get
        file paths and plain values only.  Missing model files are reported
        here, before any device starts with a path that does not exist.
        """
        missing = [str(p) for p in [*self.models.values(), *filter(None, [self.oracle_model])] if not p.is_file()]
        if missing:
            raise ScenarioError(
                f"scenario '{self.name}': model file(s) missing: {', '.join(missing)}; "
                f"run python {self.root / 'build_models.py'}"
            )
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        path = streams.write_jsonl(self.stream(), dest / "stream.jsonl").resolve()
        extra = {}
        if self.scrubbed_stream_path.is_file():  # the devices check that it pairs (else scrub live)
            scrubbed = dest / "stream.scrubbed.jsonl.gz"
            scrubbed.write_bytes(self.scrubbed_stream_path.read_bytes())
            extra["scrubbed_stream"] = str(scrubbed.resolve())
        if self.oracle_model is not None:
            extra["oracle_model"] = str(self.oracle_model)
        return {
            "name": self.name,
            "stream": str(path),
            **extra,
            "intents": list(self.intents),
            "defect_intent": self.defect_intent,
            "rate_hz": self.rate_hz,
            "window_seconds": self.window_seconds,
            "models": {k: str(v) for k, v in self.models.items()},
            "device_models": list(self.device_models),
        }


def names() -> list[str]:
    """Scenario names: sub-folders of labs/ that contain a scenario.toml."""
    return sorted(p.parent.name for p in SCENARIOS_DIR.glob(f"*/{SCENARIO_FILE}"))


def load(name: str) -> Scenario:
    """Load a scenario by its folder name (e.g. ``voice-intents``)."""
    path = SCENARIOS_DIR / name / SCENARIO_FILE
    if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        available = ", ".join(names()) or "none"
        raise ScenarioError(f"unknown scenario '{name}'; available: {available}")
    scenario = load_path(path)
    if scenario.name != name:
        raise ScenarioError(f"{path}: name = '{scenario.name}' does not match its folder '{name}'; rename one")
    return scenario


def load_path(path: Path) -> Scenario:
    """Load a scenario from a scenario.toml (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / SCENARIO_FILE
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    return _validate(raw, path.resolve())


def _check_table(where: str, table: dict, schema: dict) -> None:
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(schema)}")
    missing = [k for k, (_, required) in schema.items() if required and k not in table]
    if missing:
        raise ScenarioError(f"{where}: missing key(s) {', '.join(missing)}")
    for key, (types, _) in schema.items():
        if key not in table:
            continue
        value = table[key]
        # bool is an int subclass: `seed = true` must not pass as a seed.
        if isinstance(value, bool) or not isinstance(value, types):
            want = types.__name__ if isinstance(types, type) else "number"
            want = {"dict": "table", "list": "array", "str": "string", "int": "integer"}.get(want, want)
            article = "an" if want[0] in "aeiou" else "a"
            raise ScenarioError(f"{where}: '{key}' must be {article} {want}, got {type(value).__name__}")


def _fail(path: Path, msg: str) -> ScenarioError:
    return ScenarioError(f"{path}: {msg}")


def _validate(raw: dict, path: Path) -> Scenario:
    _check_table(str(path), raw, _TOP)
    _check_table(f"{path} [devices]", raw["devices"], _DEVICES)
    if "training" in raw:
        _check_table(f"{path} [training]", raw["training"], _TRAINING)
    if "oracle" in raw:
        _check_table(f"{path} [oracle]", raw["oracle"], _ORACLE)
    root = path.parent

    stream = raw["stream"]
    fn = getattr(streams, stream, None) if not stream.startswith("_") else None
    if not callable(fn):
        raise _fail(path, f"stream '{stream}' is not a function in labs/streams.py")

    intents = raw["intents"]
    if not intents or not all(isinstance(i, str) and i for i in intents):
        raise _fail(path, "'intents' must be a non-empty array of strings")
    if len(set(intents)) != len(intents):
        raise _fail(path, "'intents' has duplicates")
    expected = streams.LABELS.get(stream)
    if expected is not None and tuple(intents) != expected:
        raise _fail(path, f"'intents' must be {list(expected)} (the labels stream '{stream}' emits, in order)")
    if raw["defect_intent"] not in intents:
        raise _fail(path, f"defect_intent '{raw['defect_intent']}' is not one of the intents")

    if raw["seed"] < 0:
        raise _fail(path, "'seed' must be >= 0")
    if raw["stream_length"] <= 0:
        raise _fail(path, "'stream_length' must be > 0")
    pii_fraction = float(raw["pii_fraction"])
    if not 0.0 <= pii_fraction <= 1.0:
        raise _fail(path, "'pii_fraction' must be within [0, 1]")
    for key in ("rate_hz", "window_seconds"):
        if not (math.isfinite(raw[key]) and raw[key] > 0):
            raise _fail(path, f"'{key}' must be a positive number")

    models: dict[str, Path] = {}
    for key, rel in raw["models"].items():
        if not isinstance(rel, str) or not rel:
            raise _fail(path, f"[models] '{key}' must be a path string")
        models[key] = (root / rel).resolve()
    if not models:
        raise _fail(path, "[models] is empty")
    device_models = raw["devices"]["models"]
    if not device_models:
        raise _fail(path, "[devices] models is empty")
    for m in device_models:
        if not isinstance(m, str) or m not in models:
            raise _fail(path, f"[devices] models: '{m}' is not a key of [models] ({', '.join(models)})")

    return Scenario(
        name=raw["name"],
        root=root,
        description=raw["description"],
        seed=raw["seed"],
        stream_length=raw["stream_length"],
        pii_fraction=pii_fraction,
        intents=tuple(intents),
        defect_intent=raw["defect_intent"],
        rate_hz=float(raw["rate_hz"]),
        window_seconds=float(raw["window_seconds"]),
        models=models,
        device_models=tuple(device_models),
        raw=raw,
        oracle_model=(root / raw["oracle"]["model"]).resolve() if "oracle" in raw else None,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m labs.scenarios scrub-stream NAME``: rebuild a scenario's shipped scrubbed
    stream (after a change to the scrubber or to the stream; tests/test_scrub_stream.py says when)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m labs.scenarios", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("scrub-stream", help="scrub the scenario's stream once and ship it beside scenario.toml")
    p.add_argument("name", help=f"scenario ({', '.join(names())})")
    args = ap.parse_args(argv)
    try:
        out = load(args.name).write_scrubbed_stream()
    except ScenarioError as exc:
        ap.exit(2, f"python -m labs.scenarios: error: {exc}\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
