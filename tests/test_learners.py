"""A team on one lab: learners' namespaces, Unix accounts, private homes, secrets out of reach.

Real parts only: a real lab (Mosquitto + device processes), real Unix accounts made with
useradd (the tests run as root, as CI does), probes run as those accounts, a real ipykernel
running as the learner.  Accounts are named ``lltNNNNNN`` and removed at the end.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, start_lab
from learner_helpers import PY, as_user, probe_as, remove_accounts, secret_targets

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="learner accounts are created with useradd (root)")


def livelab(*args: str, home: Path, user: str | None = None, env: dict | None = None, timeout: float = 180):
    kw = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []} if user else {}
    return subprocess.run(
        [PY, "-m", "livelab", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd="/",
        **kw,
    )


@pytest.fixture(scope="module")
def team(tmp_path_factory, mosquitto_available):
    """A running lab with the recorder, and two learners with Unix accounts (removed after)."""
    from lab_hardware.runtime import lab
    from labs import learners

    home = tmp_path_factory.mktemp("teamlab")
    start_lab(home)
    # Learners' homes need a parent every account can enter (pytest's tmp dirs are root-only).
    root = Path(tempfile.mkdtemp(prefix="livelab-learners-"))
    os.chmod(root, 0o755)
    tag = secrets.token_hex(3)
    names = {"a": f"llt{tag}a", "b": f"llt{tag}b"}
    made = []
    try:
        for key, name in list(names.items()):
            e = learners.add(home, name, team="blue" if key == "a" else "red", learners_root=root)
            made.append(name)
            names[key + "_entry"] = e
        yield {"home": home, "root": root, **names}
    finally:
        lab.down(home)
        remove_accounts(*made, *_accounts_with_prefix(f"llt{tag}"))
        subprocess.run(["rm", "-rf", str(root)])


def _accounts_with_prefix(prefix: str) -> list[str]:
    return [p.pw_name for p in pwd.getpwall() if p.pw_name.startswith(prefix)]


def test_add_provisions_namespace_account_and_private_home(team):
    from lab_hardware.home import read_json
    from lab_hardware.runtime import lab

    home, a = team["home"], team["a"]
    e = team["a_entry"]
    pw = pwd.getpwnam(a)
    assert e["namespace"] == a and e["unix_user"] == a and e["account_created"]
    assert Path(e["home_dir"]) == Path(pw.pw_dir) == team["root"] / a
    assert (os.stat(e["home_dir"]).st_mode & 0o777) == 0o700 and os.stat(e["home_dir"]).st_uid == pw.pw_uid
    desc_path = Path(e["descriptor"])
    st = os.stat(desc_path)
    assert (st.st_uid, st.st_mode & 0o777) == (pw.pw_uid, 0o600)
    desc = read_json(desc_path)
    assert desc["learner"]["username"] == a and desc["namespace"] == a and desc["learner_name"] == a
    # the descriptor holds the learner's own password and nothing else secret
    ids = read_json(home / "secrets" / "identities.json")
    assert desc["learner"]["password"] == ids[a]
    blob = desc_path.read_text()
    control = lab.control_credentials(home)
    others = [pw_ for user, pw_ in ids.items() if user != a] + [control["password"]]
    assert not [p for p in others if p in blob]
    assert "control" not in json.dumps(desc).lower()
    # the lab's state directory is the lab's alone
    assert (os.stat(home).st_mode & 0o777) == 0o700
    # its devices run in its namespace, under its name in the broker's ACL
    run = read_json(home / "run" / "supervisor.json")["devices"]
    assert {f"{a}/dev-{i}" for i in range(3)} <= set(run)
    assert f"user {a}\n" in (home / "broker" / "acl").read_text()


def test_list_json_and_learner_for_path(team):
    from labs import learners

    r = livelab("learners", "list", "--json", home=team["home"])
    assert r.returncode == 0, r.stderr
    rows = {e["name"]: e for e in json.loads(r.stdout)}
    assert set(rows) == {team["a"], team["b"]}
    assert rows[team["a"]]["team"] == "blue" and rows[team["a"]]["active"]
    work = Path(rows[team["b"]]["home_dir"]) / "edge-ml-foundations-1.1.0" / "m1-telemetry" / "m1-telemetry.ipynb"
    assert learners.learner_for_path(team["home"], work) == team["b"]
    assert learners.learner_for_path(team["home"], team["root"] / "m1-telemetry.ipynb") is None


def test_add_twice_is_one_clear_line(team):
    r = livelab("learners", "add", team["a"], home=team["home"])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "already exists" in lines[0] and team["a"] in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "a;rm -rf /",
        "Eve",
        "a b",
        "x/+/#",
        "control",
        "device-1",
        "root",
        "",
        "_dash",
        "learner.x",
        "a" * 64,
        "ok\nroot",
        "eve\n",
    ],
)
def test_hostile_names_are_refused_with_one_line(team, name):
    before = {p.pw_name for p in pwd.getpwall()}
    cfg_before = json.loads((team["home"] / "config.json").read_text())["namespaces"].keys()
    r = livelab("learners", "add", name, home=team["home"])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert {p.pw_name for p in pwd.getpwall()} == before
    assert json.loads((team["home"] / "config.json").read_text())["namespaces"].keys() == cfg_before


def test_hostile_team_is_refused(team):
    r = livelab("learners", "add", "lltzzzzzz", "--team", "../x", home=team["home"])
    assert r.returncode == 2 and "team" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "lltzzzzzz" not in {p.pw_name for p in pwd.getpwall()}


def test_without_root_adding_a_learner_account_is_refused(team, tmp_path):
    r = livelab(
        "learners", "add", "lltnoroot", home=Path(tempfile.gettempdir()) / "livelab-no-lab-here", user=team["a"]
    )
    assert r.returncode == 2
    assert "needs root" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # and the lab's own (0700) state directory is refused in one line too, not with a traceback
    r = livelab("learners", "list", home=team["home"], user=team["a"])
    assert r.returncode == 2 and "permission denied" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_learner_process_cannot_read_any_secret(team):
    """Run as learner A's Unix account: every secret of the lab, the course's hidden content,
    the grader's references and B's home are unreadable; A's own descriptor is readable."""
    from livelab import hub

    home, a = team["home"], team["a"]
    hub.protect_content()  # what 'learners add' (CLI) and 'hub up' do
    got = probe_as(a, secret_targets(home, team["b_entry"], ROOT))
    assert set(got.values()) == {"denied"}, got
    # ... while A's own descriptor is readable, and A's account runs the project's Python
    own = as_user(a, "from labs.sdk import _find; c = _find(); print(c.namespace, c.username, c.learner_name)")
    assert own.returncode == 0, own.stderr
    assert own.stdout.split() == [a, a, a]


def test_learner_a_subscribing_to_b_gets_nothing(team):
    """A's broker identity reads only A's namespace: subscribing to B's (or to everything)
    yields none of B's messages while B's devices publish."""
    from lab_hardware import mqtt
    from lab_hardware.home import read_json
    from labs import Lab

    a, b = team["a"], team["b"]
    da, db = (read_json(Path(team[k + "_entry"]["descriptor"])) for k in ("a", "b"))
    got: list[str] = []
    spy = mqtt.client(username=a, password=da["learner"]["password"])
    spy.on_message = lambda c, u, m: got.append(m.topic)
    mqtt.connect(spy, "127.0.0.1", da["broker"]["port"])
    for topic in (f"livelab/{b}/#", "livelab/+/devices/+/telemetry", "livelab/#"):
        mqtt.subscribe_wait(spy, topic)
    lab_b = Lab.connect(home=Path(team["b_entry"]["descriptor"]).parent)
    try:
        assert lab_b.namespace == b and lab_b.learner == b
        lab_b.grant_consent("dev-0")
        w = lab_b.next_window("dev-0", timeout=20)  # B's devices really publish...
        assert w["device"] == "dev-0"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(lab_b.windows("dev-0")) < 3:
            time.sleep(0.05)
        assert len(lab_b.windows("dev-0")) >= 3
    finally:
        lab_b.revoke_consent("dev-0")
        lab_b.close()
    mqtt.stop(spy)
    assert not [t for t in got if t.startswith(f"livelab/{b}/")], got[:5]
    # A's own retained device states did arrive: the subscription itself worked
    assert [t for t in got if t.startswith(f"livelab/{a}/devices/")]
    # and B's password is not A's way in either
    intruder = mqtt.client(username=a, password=db["learner"]["password"])
    with pytest.raises(mqtt.ConnectError):
        mqtt.connect(intruder, "127.0.0.1", da["broker"]["port"], timeout=3)


def test_events_name_the_namespace_owner_not_the_payload(team):
    """The recorder stores A's announcements under A whatever the kernel claims."""
    from labs import Lab
    from labs.learning_events import EventStore

    a = team["a"]
    with Lab.connect(
        "m1-telemetry",
        home=Path(team["a_entry"]["descriptor"]).parent,
        learner="mallory",
        course="edge-ml-foundations",
        version="1.1.0",
        team="forged",
    ):
        pass
    with EventStore(team["home"]) as store:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and store.count(learner=a, module="m1-telemetry") < 2:
            time.sleep(0.05)
        evs = store.query(module="m1-telemetry")
        assert {e.kind for e in evs if e.learner == a} >= {"module-opened", "lab-connected"}
        assert "mallory" not in {e.learner for e in evs}
        assert {e.team for e in evs if e.learner == a} == {"blue"}


def _kernel_as(user: str, tmp: Path):
    """A real ipykernel, launched from the livelab kernelspec, running as ``user`` (what the
    learner's Jupyter server does).  Returns (process, client)."""
    from jupyter_client.connect import write_connection_file
    from jupyter_client.kernelspec import KernelSpecManager

    pw = pwd.getpwnam(user)
    cdir = Path(pw.pw_dir) / "kernel-runtime"  # where the learner's own Jupyter would put it
    cdir.mkdir(mode=0o700)
    cf, _ = write_connection_file(str(cdir / "kernel.json"))
    for p in (cdir, Path(cf)):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    spec = KernelSpecManager().get_kernel_spec("livelab")
    argv = [a.replace("{connection_file}", cf) for a in spec.argv]
    env = {
        "HOME": pw.pw_dir,
        "USER": user,
        "PATH": f"{Path(PY).parent}:/usr/bin:/bin",
        **spec.env,
        "LIVELAB_HOME": f"{pw.pw_dir}/.livelab",
    }
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=pw.pw_dir,
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=[],
        stdout=subprocess.DEVNULL,
        stderr=open(cdir / "kernel.log", "w"),
    )
    try:
        return proc, _client_when_ready(proc, cf, cdir)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _client_when_ready(proc: subprocess.Popen, cf: str, cdir: Path):
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=cf)
    kc.load_connection_file()
    kc.start_channels()
    # (wait_for_ready judges a client without a manager dead while a loaded machine still starts
    # the kernel: wait for the reply on shell *and* a message on IOPub, bounded, ourselves)
    from queue import Empty

    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, (cdir / "kernel.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "the learner's kernel did not answer within 180 s"
        kc.kernel_info()
        try:
            if kc.get_shell_msg(timeout=2)["msg_type"] != "kernel_info_reply":
                continue
            kc.get_iopub_msg(timeout=1)
            break
        except Empty:
            continue
    return kc


def _run(kc, code: str, timeout: float = 120) -> str:
    out: list[str] = []
    reply = kc.execute_interactive(
        code,
        timeout=timeout,
        output_hook=lambda m: out.append(
            m["content"].get("text", "")
            if m["msg_type"] == "stream"
            else (
                m["content"].get("ename", "") + ": " + m["content"].get("evalue", "")
                if m["msg_type"] == "error"
                else ""
            )
        ),
    )
    assert reply["content"]["status"] == "ok", "".join(out)
    return "".join(out)


def test_remove_while_kernel_runs_stops_only_its_devices(tmp_path, mosquitto_available):
    from lab_hardware.home import pid_alive, read_json
    from lab_hardware.runtime import lab
    from labs import Lab, learners

    home = tmp_path / "lab"
    start_lab(home)
    root = Path(tempfile.mkdtemp(prefix="livelab-learners-"))
    os.chmod(root, 0o755)
    tag = secrets.token_hex(3)
    a, b = f"llr{tag}a", f"llr{tag}b"
    km = kc = lab_b = None
    try:
        learners.add(home, a, learners_root=root)
        eb = learners.add(home, b, learners_root=root)
        run = read_json(home / "run" / "supervisor.json")
        km, kc = _kernel_as(a, tmp_path)
        assert os.stat(f"/proc/{km.pid}").st_uid == pwd.getpwnam(a).pw_uid
        out = _run(
            kc,
            "import os\nfrom labs import Lab\nlab = Lab.connect()\nlab.grant_consent('dev-1')\n"
            "w = lab.next_window('dev-1', timeout=30)\nprint(lab.namespace, os.getuid(), w['device'])",
        )
        assert out.split() == [a, str(pwd.getpwnam(a).pw_uid), "dev-1"]
        lab_b = Lab.connect(home=Path(eb["descriptor"]).parent)
        lab_b.grant_consent("dev-1")
        lab_b.next_window("dev-1", timeout=30)

        r = livelab("learners", "remove", a, home=home)
        assert r.returncode == 0, r.stderr

        after = read_json(home / "run" / "supervisor.json")
        mine = {k: v["pid"] for k, v in run["devices"].items() if k.startswith(f"{a}/")}
        others = {k: v["pid"] for k, v in run["devices"].items() if not k.startswith(f"{a}/")}
        assert len(mine) == 3 and not [k for k in after["devices"] if k.startswith(f"{a}/")]
        assert not [p for p in mine.values() if pid_alive(p)], "A's devices still run"
        assert {k: v["pid"] for k, v in after["devices"].items()} == others, "other devices were touched"
        assert after["broker"]["pid"] == run["broker"]["pid"]
        # B's devices keep publishing to B ...
        n = len(lab_b.windows("dev-1"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(lab_b.windows("dev-1")) <= n:
            time.sleep(0.05)
        assert len(lab_b.windows("dev-1")) > n
        # ... while A's kernel still runs and receives nothing any more
        assert km.poll() is None
        out = _run(
            kc,
            "import time\nn0 = len(lab.windows())\ntime.sleep(0)\n"
            "try:\n    lab.next_window(timeout=3)\n    print('GOT')\nexcept TimeoutError:\n    print('NOTHING')",
        )
        assert out.strip() == "NOTHING"
        assert not (root / a / ".livelab" / "lab.json").exists()
        assert learners.get(home, a) is None and learners.get(home, b) is not None
        assert lab.status(home)["running"]
    finally:
        if lab_b is not None:
            lab_b.close()
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            km.terminate()
            km.wait(30)
        lab.down(home)
        remove_accounts(a, b)
        subprocess.run(["rm", "-rf", str(root)])


def test_hub_up_without_node_says_how_to_install(tmp_path):
    r = livelab("hub", "up", home=tmp_path, env={"PATH": str(Path(PY).parent)})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "node" in lines[0] and "apt-get install nodejs npm" in lines[0], r.stderr


def test_single_user_lab_records_its_owner(lab_home):
    """'livelab up' on a laptop: lab.json names the owner, the SDK uses it, nothing else changes."""
    from lab_hardware.home import read_json
    from lab_hardware.runtime.lab import owner_name
    from labs import Lab

    desc = read_json(lab_home / "lab.json")
    assert desc["owner"] == desc["learner_name"] == owner_name()
    assert desc["namespace"] == "default" and desc["learner"]["username"] == "learner.default"
    with Lab.connect(home=lab_home) as lab:
        assert lab.learner == owner_name()


def test_hub_config_and_status_without_a_hub(tmp_path):
    """'hub config' prints a jupyterhub_config.py that compiles and keeps the spawn hook;
    'hub status --json' says not running (exit 1)."""
    r = livelab("hub", "config", "--port", "8123", home=tmp_path)
    assert r.returncode == 0, r.stderr
    compile(r.stdout, "jupyterhub_config.py", "exec")
    for needle in (
        "c.JupyterHub.port = 8123",
        'c.JupyterHub.authenticator_class = "pam"',
        "c.Spawner.pre_spawn_hook = make_pre_spawn_hook(",
        "learner_jupyter",
        'c.JupyterHub.spawner_class = "localprocess"',
        f"LIVELAB_HOME = {str(tmp_path)!r}",
    ):
        assert needle in r.stdout, needle
    s = livelab("hub", "status", "--json", home=tmp_path)
    assert s.returncode == 1 and json.loads(s.stdout)["running"] is False
