"""Hardware profiles: the shape of a simulated device (speed, memory, link).

Profiles are data (``*.toml`` beside this file) so course authors can add one
without code.  Loading validates strictly: an unknown key is a typo that would
otherwise silently give a full-speed device.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

PROFILES_DIR = Path(__file__).parent


class ProfileError(ValueError):
    """A profile that does not exist or does not validate."""


@dataclass(frozen=True)
class Link:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    bandwidth_kbps: float = 0.0


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    cores: int
    memory_mb: int
    inference_slowdown: float
    link: Link

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        return cls(**{**d, "link": Link(**d["link"])})

    def satisfies(self, minimum: "Profile") -> bool:
        """Whether this device is at least as capable as ``minimum`` (for bundle compute needs)."""

        def cap(v: int) -> float:
            return float("inf") if v == 0 else v

        return (
            cap(self.cores) >= cap(minimum.cores)
            and cap(self.memory_mb) >= cap(minimum.memory_mb)
            and self.inference_slowdown <= minimum.inference_slowdown
        )


_TOP = {
    "name": str,
    "description": str,
    "cores": int,
    "memory_mb": int,
    "inference_slowdown": (int, float),
    "link": dict,
}
_LINK = {"latency_ms": (int, float), "jitter_ms": (int, float), "loss": (int, float), "bandwidth_kbps": (int, float)}


def _check(table: dict, spec: dict, where: str) -> None:
    unknown = sorted(set(table) - set(spec))
    if unknown:
        raise ProfileError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(spec)}")
    for key, typ in spec.items():
        if key not in table:
            raise ProfileError(f"{where}: missing key {key!r}")
        if isinstance(table[key], bool) or not isinstance(table[key], typ):
            raise ProfileError(f"{where}: {key!r} has the wrong type")


def names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_path(path: Path) -> Profile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path.name}: cannot read profile: {exc}") from None
    _check(data, _TOP, path.name)
    _check(data["link"], _LINK, f"{path.name} [link]")
    link = Link(**{k: float(v) for k, v in data["link"].items()})
    if not 0 <= link.loss < 1:
        raise ProfileError(f"{path.name}: link loss must be in [0, 1)")
    if data["inference_slowdown"] < 1 or data["cores"] < 0 or data["memory_mb"] < 0:
        raise ProfileError(f"{path.name}: inference_slowdown must be >= 1, cores and memory_mb >= 0")
    return Profile(
        name=data["name"],
        description=data["description"],
        cores=data["cores"],
        memory_mb=data["memory_mb"],
        inference_slowdown=float(data["inference_slowdown"]),
        link=link,
    )


def load(name: str) -> Profile:
    """A profile by name, e.g. ``none`` or ``rpi4``."""
    path = PROFILES_DIR / f"{name}.toml"
    if not path.is_file():
        raise ProfileError(f"unknown hardware profile {name!r}; available: {', '.join(names())}")
    return load_path(path)
