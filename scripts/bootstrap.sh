#!/usr/bin/env bash
# Set up everything `make demo` and `make test` need, on a fresh Debian machine or a conda env:
# the project venv (.venv) with the package installed editable, Mosquitto, Chromium (browser
# tests) and the `livelab` kernelspec.  Idempotent: a second run only checks, in well under 2 s.
# Prints one line per step that did something; noisy tool output goes to .venv/*.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.livelab-installed"
PIP_LOG="$VENV/pip.log"
SYS_LOG="$VENV/setup.log"          # apt-get / conda output
PY="${PYTHON:-python3}"
APT_UPDATED=0
PIP_RAN=0

say() { echo "setup: $*"; }
die() { local code=$1; shift; echo "livelab: $*" >&2; exit "$code"; }
is_root() { [ "$(id -u)" -eq 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }
# A binary on PATH or in the usual sbin/bin dirs (root's PATH has sbin, a user's often not).
find_bin() { have "$1" || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
log_tail() { echo "livelab: last lines of $1:" >&2; tail -n "${2:-20}" "$1" | sed 's/^/  /' >&2; }

apt_install() {  # apt_install PKG...; returns apt-get's status (callers judge by the result)
  mkdir -p "$(dirname "$SYS_LOG")"
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get update -qq >>"$SYS_LOG" 2>&1 9>&- || { log_tail "$SYS_LOG"; die 1 "apt-get update failed"; }
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null >>"$SYS_LOG" 2>&1 9>&-
}

# Concurrent runs (several `make test` at once) must not pip-install into one venv together.
LOCK="${TMPDIR:-/tmp}/livelab-bootstrap-$(printf %s "$ROOT" | cksum | cut -d' ' -f1).lock"
# (fd 9 is closed for apt-get/conda: a service they start must not inherit the lock.)
if have flock && touch "$LOCK" 2>/dev/null && [ -w "$LOCK" ]; then
  exec 9>>"$LOCK"
  flock -n 9 || { echo "setup: waiting for another setup run in $ROOT to finish..." >&2; flock 9; }
fi

# A team lab runs learners' servers and kernels from this venv as other Unix users, so as root
# prefer a Python they can reach: one under a closed directory (pyenv in /root) is not.
closed_to_others() {  # closed_to_others PATH: some directory on the way is not o+x
  local d; d=$(dirname "$(readlink -f "$1")")
  while [ "$d" != "/" ]; do
    local perm; perm=$(stat -c %A "$d")
    case "${perm:9:1}" in x|t) ;; *) return 0 ;; esac
    d=$(dirname "$d")
  done
  return 1
}
if is_root && [ -z "${PYTHON:-}" ] && have "$PY" && closed_to_others "$(command -v "$PY")"; then
  for cand in /usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11; do
    if [ -x "$cand" ] && "$cand" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$cand"; break
    fi
  done
fi

# ---- Python and the venv -------------------------------------------------------------------
# An existing .venv is never deleted here (it may hold someone's work): a broken one is reported.
if [ ! -e "$VPY" ] && [ ! -L "$VPY" ]; then
  have "$PY" || die 2 "python3 (>= 3.11) is required: install it (sudo apt-get install python3) or set PYTHON=/path/to/python3.11"
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    die 2 "Python >= 3.11 is required but $PY is $("$PY" -c 'import platform; print(platform.python_version())'): install python3.11 and run 'PYTHON=python3.11 make setup'"
  fi
  VENV_EXISTED=0; [ -d "$VENV" ] && VENV_EXISTED=1
  if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if is_root && have apt-get; then
      say "installing python3-venv (apt-get)..."
      apt_install python3-venv || { log_tail "$SYS_LOG"; die 1 "apt-get install python3-venv failed"; }
    else
      die 2 "the Python venv module is missing: run 'sudo apt-get install python3-venv'"
    fi
  fi
  say "creating .venv with $("$PY" -c 'import sys; print(sys.executable)')..."
  VENV_ERR=$(mktemp)
  if ! "$PY" -m venv "$VENV" >/dev/null 2>"$VENV_ERR"; then
    cat "$VENV_ERR" >&2; rm -f "$VENV_ERR"
    [ "$VENV_EXISTED" = 1 ] || rm -rf "$VENV"   # only what this run created
    die 1 "could not create .venv with $PY -m venv"
  fi
  rm -f "$VENV_ERR"
elif ! "$VPY" -c '' >/dev/null 2>&1; then
  die 1 ".venv/bin/python does not run (the Python it was made from moved, or this user cannot run it): remove .venv ('make clean') and run 'make setup' again"
fi

# ---- the package (editable) and its dependencies -------------------------------------------
# Dependencies come from requirements.lock (every package pinned, with hashes: the same set on
# every machine, whatever PyPI's newest is that day); the package itself goes in editable
# without resolving anything.  `make lock` updates the lock after a pyproject.toml change.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ requirements.lock -nt "$STAMP" ]; then
  say "installing Python packages (first run takes a few minutes; log: .venv/pip.log)..."
  if ! "$VPY" -m pip install --disable-pip-version-check --require-hashes -r requirements.lock >"$PIP_LOG" 2>&1 \
     || ! "$VPY" -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e . >>"$PIP_LOG" 2>&1; then
    log_tail "$PIP_LOG"
    die 1 "pip install failed (full log: .venv/pip.log)"
  fi
  # A dependency added to pyproject.toml but not to the lock is missing now: say so.
  if ! "$VPY" -m pip check --disable-pip-version-check >>"$PIP_LOG" 2>&1; then
    log_tail "$PIP_LOG" 5
    die 1 "requirements.lock does not satisfy pyproject.toml: run 'make lock', then 'make setup' again"
  fi
  touch "$STAMP"
  PIP_RAN=1
fi

# ---- Mosquitto (the lab's broker) ------------------------------------------------------------
if ! { find_bin mosquitto && find_bin mosquitto_passwd; }; then
  if [ -n "${CONDA_PREFIX:-}" ] && { have mamba || have conda; }; then
    CONDA_CMD=$(have mamba && echo mamba || echo conda)
    say "installing mosquitto into the conda env $CONDA_PREFIX ($CONDA_CMD)..."
    mkdir -p "$(dirname "$SYS_LOG")"
    "$CONDA_CMD" install -y -c conda-forge mosquitto >>"$SYS_LOG" 2>&1 9>&- \
      || { log_tail "$SYS_LOG"; die 1 "$CONDA_CMD install mosquitto failed"; }
  elif is_root && have apt-get; then
    say "installing mosquitto (apt-get)..."
    # The Debian package may try to start a system service on port 1883; the lab never uses
    # it, and in containers (no init system) that start can fail and fail the install.  So
    # judge by the binaries, not by apt-get's exit status.
    apt_install mosquitto || true
    if ! { find_bin mosquitto && find_bin mosquitto_passwd; }; then
      log_tail "$SYS_LOG"; die 1 "apt-get install mosquitto failed"
    fi
  else
    die 2 "mosquitto is required: run 'sudo apt-get install mosquitto' or 'conda install -c conda-forge mosquitto'"
  fi
fi

# ---- Chromium (browser tests drive /usr/bin/chromium; `playwright install` is never used) ----
if [ ! -x /usr/bin/chromium ]; then
  if is_root && have apt-get; then
    say "installing chromium for the browser tests (apt-get; takes a minute)..."
    apt_install chromium chromium-driver || true
    [ -x /usr/bin/chromium ] || { log_tail "$SYS_LOG"; die 1 "apt-get install chromium failed"; }
  else
    echo "setup: warning: /usr/bin/chromium is missing, so browser tests will fail: run 'sudo apt-get install chromium chromium-driver'" >&2
  fi
fi

# ---- configurable-http-proxy (JupyterHub's proxy, for 'livelab hub up') ---------------------
# From npm into the project (.venv/node), no global install.  Without node/npm the rest of the
# platform works; 'livelab hub up' then says how to install them.
CHP="$VENV/node/node_modules/.bin/configurable-http-proxy"
if [ ! -x "$CHP" ]; then
  if ! have npm && is_root && have apt-get; then
    say "installing nodejs and npm (apt-get; for JupyterHub's proxy)..."
    apt_install nodejs npm || true
  fi
  if have npm; then
    say "installing configurable-http-proxy into .venv/node (npm)..."
    mkdir -p "$VENV/node"
    npm install --prefix "$VENV/node" --no-audit --no-fund --loglevel=error configurable-http-proxy@5 \
      >>"$SYS_LOG" 2>&1 9>&- || echo "setup: warning: npm install configurable-http-proxy failed (see .venv/setup.log): 'livelab hub' will not start" >&2
  else
    echo "setup: warning: npm is missing, so 'livelab hub up' will not start: run 'sudo apt-get install nodejs npm' and 'make setup' again" >&2
  fi
fi

# ---- the livelab kernelspec ----------------------------------------------------------------
SPEC="$VENV/share/jupyter/kernels/livelab/kernel.json"
if [ "$PIP_RAN" = 1 ] || [ ! -f "$SPEC" ] || ! grep -qF "\"$VPY\"" "$SPEC" \
   || [ kernels/livelab/kernel.json -nt "$SPEC" ] || [ kernels/install.py -nt "$SPEC" ]; then
  say "installing the livelab kernelspec..."
  "$VPY" -m kernels install --sys-prefix >/dev/null || die 1 "installing the livelab kernelspec failed (see above)"
fi

# ---- where livelab is ----------------------------------------------------------------------
if [ "$PIP_RAN" = 1 ] && [ "$(command -v livelab 2>/dev/null)" != "$VENV/bin/livelab" ]; then
  say "ready: put 'livelab' on your PATH with '. .venv/bin/activate' (or run .venv/bin/livelab)"
fi
