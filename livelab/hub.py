"""A team's front door: a real JupyterHub in front of one lab (``livelab hub up|down|status|config``).

Why JupyterHub: each learner logs in, and their Jupyter server and kernels run as their own Unix
account (``LocalProcessSpawner`` with system users), so nothing in a learner's notebook can read
the lab's secrets, the course's hidden tests or another learner's work.  The hub's
``pre_spawn_hook`` provisions the learner exactly as ``livelab learners add`` does (namespace,
account, private home with only its ``lab.json``), places the learner notebooks of the course's
current release in the learner's home, and opens the server there.  Learners' servers load no
nbgrader author tools (formgrader, create-assignment, course list): their Jupyter config path
adds ``livelab/learner_jupyter/``, which disables them for single-user servers only.

The hub's own state (its database, cookie secret, proxy token, log, generated config) lives in
``<lab home>/hub/``, inside the lab's private state directory.  ``hub config`` prints the same
``jupyterhub_config.py`` for an existing hub; KubeSpawner users register the same hook.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lab_hardware import home as _home
from lab_hardware.runtime import broker as _broker
from lab_hardware.runtime import lab as _lab

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
#: Jupyter config dir added to learners' servers (disables nbgrader's author tools there).
LEARNER_JUPYTER = Path(__file__).resolve().parent / "learner_jupyter"
#: Where ``scripts/bootstrap.sh`` installs configurable-http-proxy (npm, into the project).
NODE_PREFIX = REPO / ".venv" / "node"
AUTHS = ("pam", "dummy")
DEFAULT_COURSE = "edge-ml-foundations"


class HubError(RuntimeError):
    """A hub problem the user can fix; the message is one line saying how."""


def hub_dir(home: Path) -> Path:
    return home / "hub"


# ---- prerequisites ------------------------------------------------------------------------
def find_proxy() -> str:
    """configurable-http-proxy (npm) and a node to run it, or one line saying how to install."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        raise HubError(
            "node is not installed (JupyterHub's proxy, configurable-http-proxy, runs on it): "
            "run 'sudo apt-get install nodejs npm' and then 'make setup'"
        )
    forced = os.environ.get("LIVELAB_CHP")
    cands = (
        [forced]
        if forced
        else [
            str(NODE_PREFIX / "node_modules" / ".bin" / "configurable-http-proxy"),
            shutil.which("configurable-http-proxy") or "",
        ]
    )
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise HubError(
        "configurable-http-proxy is not installed: run 'make setup' (it runs 'npm install --prefix "
        ".venv/node configurable-http-proxy'; needs npm: 'sudo apt-get install npm')"
    )


def _reachable_by_others(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that other users cannot enter, or None."""
    p = Path(os.path.realpath(path))
    for d in [*reversed(p.parents)]:
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return d
        except OSError:
            return d
    return None


def check_learners_can_run() -> None:
    """Learners' servers and kernels run this environment as other users: its interpreter,
    standard library and packages must be reachable by them (a venv made from a Python under
    root's home is not)."""
    for what in (Path(sys.executable), Path(sys.base_prefix) / "lib", Path(sys.prefix) / "lib", REPO / "labs"):
        blocked = _reachable_by_others(what)
        if blocked is not None:
            raise HubError(
                f"learners cannot run this environment ({blocked} is closed to other users, on the "
                f"way to {what}): recreate the venv from a Python they can run, e.g. "
                "'rm -rf .venv && PYTHON=/usr/bin/python3 make setup'"
            )


def protect_content() -> list[str]:
    """Close the course content folders of this checkout (source notebooks with hidden tests,
    releases) to everyone but their owner: learners fetch their notebooks through the hub.
    Python packages of the checkout stay readable (kernels import them)."""
    from courses import catalog

    out = []
    for d in catalog.course_dirs():
        os.chmod(d, 0o700)
        out.append(str(d))
    return out


# ---- provisioning (the spawn hook) ----------------------------------------------------------
def provision(
    home: str | os.PathLike, name: str, *, team: str | None = None, course: str | None = DEFAULT_COURSE
) -> dict[str, Any]:
    """What the hub does before a learner's server starts: the learner provisioned (as
    ``livelab learners add``) and the course's current release fetched into its home.
    Returns the spawn settings: environment, notebook dir and the URL the server opens on."""
    from labs import learners

    h = _home.resolve(home)
    e = learners.ensure(h, name, team)
    env = {"LIVELAB_HOME": str(Path(e["descriptor"]).parent), "LIVELAB_LEARNER": name}
    if e.get("team"):
        env["LIVELAB_TEAM"] = e["team"]
    out: dict[str, Any] = {"learner": e, "environment": env, "notebook_dir": e["home_dir"], "default_url": "/lab"}
    if course:
        ws = fetch_course(course, Path(e["home_dir"]), e.get("uid"))
        if ws is not None:
            out["workspace"] = str(ws)
            out["default_url"] = f"/lab/tree/{ws.relative_to(e['home_dir'])}"
    return out


def fetch_course(course_id: str, home_dir: Path, uid: int | None) -> Path | None:
    """The learner notebooks of the course's current release in the learner's home (fetched
    once: a fetched workspace holds the learner's work and is never overwritten)."""
    from courses import catalog

    c = catalog.load(course_id)
    rels = catalog.releases(c)
    if not rels:
        return None
    dest = home_dir / f"{c.id}-{rels[-1]}"
    if not (dest / ".livelab-course.json").exists():
        catalog.fetch(c, rels[-1], dest)
    if uid is not None:
        gid = Path(home_dir).stat().st_gid
        for p in [dest, *dest.rglob("*")]:
            os.chown(p, uid, gid)
    return dest


def make_pre_spawn_hook(home: str | os.PathLike, *, course: str | None = DEFAULT_COURSE):
    """The ``Spawner.pre_spawn_hook`` for ``home``'s lab (LocalProcessSpawner, KubeSpawner...)."""
    home = str(_home.resolve(home))

    async def pre_spawn_hook(spawner) -> None:
        import asyncio
        from labs.learners import LearnerError

        name = spawner.user.name
        try:  # provisioning waits for the learner's devices: off the hub's event loop
            got = await asyncio.to_thread(provision, home, name, course=course)
        except (LearnerError, _lab.LabError) as exc:
            spawner.log.error("livelab could not provision %s: %s", name, exc)
            raise
        spawner.environment.update(got["environment"])
        spawner.notebook_dir = got["notebook_dir"]
        spawner.default_url = got["default_url"]

    return pre_spawn_hook


# ---- the hub process ------------------------------------------------------------------------
def render_config(
    home: str | os.PathLike,
    *,
    port: int = 8000,
    auth: str = "pam",
    password: str | None = None,
    course: str | None = DEFAULT_COURSE,
    proxy: str | None = None,
    api_port: int | None = None,
    hub_port: int | None = None,
) -> str:
    """The ``jupyterhub_config.py`` that ``hub up`` runs (and ``hub config`` prints)."""
    h = _home.resolve(home)
    hd = hub_dir(h)
    if auth not in AUTHS:
        raise HubError(f"unknown authenticator {auth!r}: use one of {', '.join(AUTHS)}")
    lines = [
        "# jupyterhub_config.py for a livelab team lab -- generated by 'livelab hub config'.",
        "# Learners log in; each server runs as the learner's own Unix account; the pre-spawn hook",
        "# provisions the learner (namespace, account, private home with its lab.json) and opens the",
        "# course's current release.  KubeSpawner: keep the hook, set c.JupyterHub.spawner_class.",
        "from livelab.hub import make_pre_spawn_hook",
        "",
        "c = get_config()  # noqa: F821",
        f"LIVELAB_HOME = {str(h)!r}",
        'c.JupyterHub.ip = "127.0.0.1"',
        f"c.JupyterHub.port = {int(port)}",
        'c.JupyterHub.hub_ip = "127.0.0.1"',
    ]
    if hub_port:
        lines.append(f"c.JupyterHub.hub_port = {int(hub_port)}")
    lines += [
        f"c.JupyterHub.db_url = {('sqlite:///' + str(hd / 'jupyterhub.sqlite'))!r}",
        f"c.JupyterHub.cookie_secret_file = {str(hd / 'jupyterhub_cookie_secret')!r}",
        f"c.JupyterHub.pid_file = {str(hd / 'jupyterhub.pid')!r}",
        "c.JupyterHub.cleanup_servers = True   # 'livelab hub down' stops every learner's server",
        f"c.ConfigurableHTTPProxy.command = [{(proxy or 'configurable-http-proxy')!r}]",
        f"c.ConfigurableHTTPProxy.pid_file = {str(hd / 'proxy.pid')!r}",
    ]
    if api_port:
        lines.append(f'c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{int(api_port)}"')
    if auth == "pam":
        lines += [
            'c.JupyterHub.authenticator_class = "pam"',
            "# Every Unix account that logs in is a learner (system accounts are refused by the hook).",
            "c.Authenticator.allow_all = True",
        ]
    else:
        lines += [
            'c.JupyterHub.authenticator_class = "dummy"   # tests and demos only: one shared password',
            "c.Authenticator.allow_all = True",
            f"c.DummyAuthenticator.password = {password or ''!r}",
        ]
    lines += [
        'c.JupyterHub.spawner_class = "localprocess"',
        f"c.Spawner.cmd = [{str(VENV_BIN / 'jupyterhub-singleuser')!r}]",
        f"c.Spawner.environment = {{'JUPYTER_CONFIG_PATH': {str(LEARNER_JUPYTER)!r},",
        f"                          'PATH': {(str(VENV_BIN) + ':/usr/local/bin:/usr/bin:/bin')!r}}}",
        "c.Spawner.start_timeout = 180   # a loaded machine starts servers slowly",
        "c.Spawner.http_timeout = 180",
        f"c.Spawner.pre_spawn_hook = make_pre_spawn_hook(LIVELAB_HOME, course={course!r})",
        "",
    ]
    return "\n".join(lines)


def _pid(home: Path) -> int | None:
    try:
        info = _home.read_json(hub_dir(home) / "hub.json")
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if _home.pid_alive(pid) and _is_hub(pid):
        return pid
    return None


def _is_hub(pid: int) -> bool:
    try:
        return b"jupyterhub" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False


def status(home: str | os.PathLike | None = None) -> dict[str, Any]:
    """Whether the hub runs, where (``url``), and the learners it provisioned."""
    h = _home.resolve(home)
    pid = _pid(h)
    if pid is None:
        return {"running": False, "home": str(h)}
    info = _home.read_json(hub_dir(h) / "hub.json")
    from labs import learners

    return {**info, "running": True, "home": str(h), "learners": [e["name"] for e in learners.list_learners(h)]}


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def up(
    home: str | os.PathLike | None = None,
    *,
    port: int | None = None,
    auth: str = "pam",
    password: str | None = None,
    course: str | None = DEFAULT_COURSE,
    timeout: float = 90.0,
) -> dict[str, Any]:
    """Start JupyterHub in front of the running lab and return its status (with ``url``)."""
    proxy = find_proxy()
    h = _home.resolve(home)
    if auth not in AUTHS:
        raise HubError(f"unknown authenticator {auth!r}: use one of {', '.join(AUTHS)}")
    if auth == "dummy" and not password:
        raise HubError("the dummy authenticator needs --password (one shared password; tests and demos only)")
    if os.geteuid() != 0:
        raise HubError(
            "the hub runs each learner's server as that learner's Unix account, which needs root: "
            "run 'sudo livelab hub up'"
        )
    _lab.descriptor(h)  # a running lab, or one line saying how to start it
    running = status(h)
    if running["running"]:
        if port is None or running["port"] == port:
            return {**running, "reused": True}
        raise HubError(f"a hub already runs on port {running['port']}: 'livelab hub down' first")
    if port is not None and _broker.port_in_use(port):
        raise HubError(f"port {port} on 127.0.0.1 is in use: choose another with --port")
    check_learners_can_run()
    port = port or _broker.free_port()
    hd = hub_dir(h)
    hd.mkdir(parents=True, exist_ok=True)
    os.chmod(hd, 0o700)
    from labs import learners

    learners.lock_down(h)
    protect_content()
    cfg = hd / "jupyterhub_config.py"
    cfg.write_text(
        render_config(
            h,
            port=port,
            auth=auth,
            password=password,
            course=course,
            proxy=proxy,
            api_port=_broker.free_port(),
            hub_port=_broker.free_port(),
        )
    )
    os.chmod(cfg, 0o600)
    log_path = hd / "hub.log"
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(cfg)],
            cwd=str(hd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    info = {
        "pid": proc.pid,
        "port": port,
        "url": url,
        "auth": auth,
        "course": course,
        "log": str(log_path),
        "started": time.time(),
    }
    _home.write_json(hd / "hub.json", info, mode=0o600)
    deadline = time.monotonic() + timeout
    while not _http_ok(url + "hub/api/"):
        if proc.poll() is not None:
            raise HubError(f"JupyterHub exited with code {proc.returncode}: {_last_line(log_path)}")
        if time.monotonic() > deadline:
            _stop(proc.pid)
            raise HubError(f"JupyterHub did not answer on {url} within {timeout:.0f} s: {_last_line(log_path)}")
        time.sleep(0.1)
    return {**info, "running": True, "home": str(h)}


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errs = [ln for ln in lines if " E " in ln or "Error" in ln]
    return (errs or lines or ["(empty log)"])[-1].strip()[:300]


def _stop(pid: int, timeout: float = 30.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _home.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _home.pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def down(home: str | os.PathLike | None = None, *, timeout: float = 30.0) -> dict[str, Any]:
    """Stop the hub; it stops its proxy and every learner's server (``cleanup_servers``)."""
    h = _home.resolve(home)
    pid = _pid(h)
    if pid is None:
        return {"stopped": False, "message": f"no hub running for the lab in {h}"}
    _stop(pid, timeout)
    for name in ("proxy.pid",):  # a proxy the hub could not stop (it was killed -9)
        try:
            ppid = int((hub_dir(h) / name).read_text())
        except (OSError, ValueError):
            continue
        if _home.pid_alive(ppid) and b"configurable-http-proxy" in open(f"/proc/{ppid}/cmdline", "rb").read():
            os.kill(ppid, signal.SIGTERM)
    info = _home.read_json(hub_dir(h) / "hub.json")
    info["stopped"] = time.time()
    _home.write_json(hub_dir(h) / "hub.json", {**info, "pid": None}, mode=0o600)
    return {"stopped": True, "message": f"hub on port {info['port']} stopped"}


def config_text(
    home: str | os.PathLike | None = None, *, port: int = 8000, auth: str = "pam", course: str | None = DEFAULT_COURSE
) -> str:
    """The ``jupyterhub_config.py`` for an existing hub (``hub config``)."""
    try:
        proxy = find_proxy()
    except HubError:
        proxy = None
    return render_config(
        home, port=port, auth=auth, password="CHANGE-ME" if auth == "dummy" else None, course=course, proxy=proxy
    )


__all__ = [
    "HubError",
    "up",
    "down",
    "status",
    "config_text",
    "render_config",
    "provision",
    "make_pre_spawn_hook",
    "find_proxy",
    "protect_content",
    "check_learners_can_run",
]


if __name__ == "__main__":  # pragma: no cover - a debugging aid
    print(json.dumps(status(), indent=2))
