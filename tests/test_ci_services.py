""".ci/services and `make test`: the services are checked before any pip install; a user who is not
root is told in one line what to run, and nothing is escalated with sudo; as root (CI) the missing
Debian packages are installed with apt-get and the daemons Debian starts with them stopped.

The script runs in a private mount namespace where the services' directories are empty, with
PATH holding only the tools it needs and recording stand-ins for apt-get, sudo, systemctl and
service: the machine's own packages and daemons are never touched."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from openpole import paths

PACKAGES = "mosquitto fuse3 nats-server postgresql chromium chromium-driver"
# Where .ci/services finds what PATH does not: hidden in the namespace, so every package is missing.
HIDDEN = ("/usr/sbin", "/usr/lib/postgresql")
RECORDED = ("apt-get", "sudo", "systemctl", "service", "python3")
ROOT = os.geteuid() == 0

# Runs as root of the namespace: HIDDEN emptied, a fresh /run (holding the directory systemd's
# callers test for, when asked), then the command.
NAMESPACE = r"""
set -e
empty=$1; systemd=$2; shift 2
for d in %s; do
  if [ -d "$d" ]; then mount --bind "$empty" "$d"; fi
done
mount -t tmpfs tmpfs /run
if [ "$systemd" = 1 ]; then mkdir -p /run/systemd/system; fi
exec "$@"
""" % " ".join(HIDDEN)


def as_nobody():
    """A prefix that runs the command as a user who is not root: nobody for root, else the user."""
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if ROOT else []


@pytest.fixture
def box():
    """A directory everyone can read (the command may run as nobody): the script, and bin/ with the
    tools it needs and the recording stand-ins, which append "name args" to log."""
    root = Path(tempfile.mkdtemp(prefix="openpole-ci-"))
    try:
        root.chmod(0o755)
        shutil.copy(paths.ROOT / ".ci" / "services", root / "services")
        (root / "empty").mkdir()
        bin_ = root / "bin"
        bin_.mkdir()
        for tool in ("id", "ls", "make", "bash"):
            (bin_ / tool).symlink_to(shutil.which(tool))
        log = root / "log"
        log.touch()
        log.chmod(0o666)
        for name in RECORDED:
            # `service nats-server stop` fails as it does where the package has no init script.
            fail = '[ "$1" = nats-server ] && exit 1\n' if name == "service" else ""
            stub = bin_ / name
            stub.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{fail}exit {1 if name == "python3" else 0}\n')
            stub.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root)


def run_services(box, drop=(), systemd=False):
    """.ci/services in a private mount namespace, HIDDEN empty, its PATH only box/bin; drop: a prefix
    that makes it run as someone else."""
    ns = ["unshare", "--mount", "--propagation", "private"] if ROOT else ["unshare", "--user", "--map-root-user", "--mount"]
    script = ["/bin/sh", "-c", NAMESPACE, "sh", str(box / "empty"), "1" if systemd else "0"]
    r = subprocess.run(ns + script + list(drop) + ["env", "-i", f"PATH={box / 'bin'}", "/bin/bash", str(box / "services")],
                       capture_output=True, text=True, timeout=60)
    assert not r.stderr.startswith(("unshare:", "mount:")), \
        f"the test's mount namespace could not be made (it needs what the FUSE tests need): {r.stderr}"
    return r


def calls(box):
    return (box / "log").read_text().splitlines()


def test_a_user_who_is_not_root_is_told_in_one_line_what_to_run_and_nothing_is_escalated(box):
    # As the user, with a sudo that would let anything through: the script must not use it.
    drop = as_nobody() if ROOT else ["unshare", "--user"]  # in the namespace: root of it, then no one
    r = run_services(box, drop)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout == ""
    assert r.stderr == (f"openpole tests need {PACKAGES} (real brokers, NATS, PostgreSQL; FUSE for the power-cut tests; "
                        f"a browser for the page): run `sudo apt-get update && sudo apt-get install -y {PACKAGES}`, then make test again\n")
    assert calls(box) == []  # no sudo, no apt-get


@pytest.mark.parametrize("systemd", [False, True], ids=["no-systemd", "systemd"])
def test_as_root_the_packages_are_installed_and_their_daemons_stopped(box, systemd):
    r = run_services(box, systemd=systemd)
    assert r.returncode == 0, r.stdout + r.stderr
    daemons = ("mosquitto", "nats-server", "postgresql")
    installed = ["apt-get update -qq", f"apt-get install -y -qq {PACKAGES}"]  # the lists once, then everything
    if systemd:
        assert calls(box) == installed + [f"systemctl disable --now {d}" for d in daemons]
        said = [f"stopped and disabled the system {d} (systemctl)" for d in daemons]
    else:  # no systemd in the container: `service`, and a daemon it cannot stop is left as it is
        assert calls(box) == installed + [f"service {d} stop" for d in daemons]
        said = [f"stopped the system {d} (service)" for d in ("mosquitto", "postgresql")]
    assert r.stdout.splitlines() == [f"installing {PACKAGES} for the tests (apt-get)"] + said
    assert r.stderr == ""


def test_make_test_checks_the_services_before_any_pip_install(box):
    """`make test` in a copy of the Makefile, with chromium missing: it stops at the services check,
    before Python is ever run to make a venv (python3 here only records that it was called)."""
    work = box / "work"
    for rel in ("Makefile", ".ci/services", "pyproject.toml", "tools/spec/cddl/requirements.txt"):  # what it reads
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths.ROOT / rel, work / rel)
    if ROOT:
        shutil.chown(work, "nobody")  # so that a venv could be made there: the test must see one
    r = subprocess.run(as_nobody() + ["env", "-i", f"PATH={box / 'bin'}", "make", "-C", str(work), "test"],
                       capture_output=True, text=True, timeout=60)
    assert calls(box) == [], "make ran Python (a venv, a pip install) before the services check"
    assert r.returncode != 0, r.stdout + r.stderr
    assert "openpole tests need" in r.stderr and "run `sudo apt-get update && sudo apt-get install -y" in r.stderr, r.stderr
    assert not (work / ".venv").exists() and not (work / ".venv-cddl").exists()
