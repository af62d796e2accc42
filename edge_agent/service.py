"""`openpole edge install-service`: the agent as a systemd service, from its own config.

The unit (openpole-edge.service beside this file) runs the agent as a system user of its own with
write access to the configured state directory only; the user is made here (or by `openpole pole
init` writing to /), and it owns the agent's config, its node keys and its state, so the service
can read its secrets while nobody else on the Pi can.
"""

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

from openpole.errors import UserError

UNIT = "openpole-edge.service"
NOLOGIN = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(p)), "/bin/false")
# The Pi's groups for sensors on its own buses ([[sources]]): serial ports and I2C.
SOURCE_GROUPS = {"pms5003": "dialout", "node-serial": "dialout", "bme280": "i2c"}


def useradd_command(user, home):
    return ["useradd", "--system", "--user-group", "--home-dir", str(home), "--no-create-home", "--shell", NOLOGIN, user]


def ensure_user(user, home):
    """The system user the agent runs as, made when missing (as root). Returns True when it was made;
    a UserError with the command to run when it is missing and we are not root."""
    try:
        pwd.getpwnam(user)
        return False
    except KeyError:
        pass
    cmd = useradd_command(user, home)
    if os.geteuid() != 0:
        raise UserError(f"the user {user} does not exist: create it with `sudo {' '.join(cmd)}`, or run this as root")
    if shutil.which(cmd[0]) is None:
        raise UserError(f"the user {user} does not exist and useradd is missing: create a system user {user} by hand")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise UserError(f"useradd {user} failed: {(r.stderr or r.stdout).strip()}")
    return True


def hand_over(user, paths):
    """Make the service user own the agent's files, and all a directory holds (a queue an earlier run
    as root left behind would otherwise be read-only to the service). As root."""
    pw = pwd.getpwnam(user)
    for p in map(Path, paths):
        if not p.exists():
            continue
        os.chown(p, pw.pw_uid, pw.pw_gid)
        if p.is_dir():
            for top, dirs, files in os.walk(p):
                for name in dirs + files:
                    os.chown(os.path.join(top, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


# What the unit's sandbox hides from the agent (ProtectHome=true, PrivateTmp=true).
HIDDEN = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")


def hidden(path):
    """The hidden folder `path` lies in, or None."""
    p = str(Path(path).resolve())
    return next((h for h in HIDDEN if p == h or p.startswith(h + "/")), None)


def unit_text(cfg, config, exe, user, group=None):
    """The unit for this config: User=, the state directory writable (StateDirectory= when it is under
    /var/lib), the sources' device groups, and the bind capability for a page or metrics port < 1024."""
    state = Path(cfg.state_dir).resolve()
    extra = []
    if state.parent == Path("/var/lib"):
        extra.append(f"StateDirectory={state.name}")
        extra.append("StateDirectoryMode=0700")
    groups = sorted({SOURCE_GROUPS[s.get("kind")] for s in cfg.sources if s.get("kind") in SOURCE_GROUPS})
    groups = [g for g in groups if _group_exists(g)]
    if groups:
        extra.append(f"SupplementaryGroups={' '.join(groups)}")
    ports = [cfg.metrics_port]
    if cfg.page_listen:
        from openpole.common import parse_hostport

        ports.append(parse_hostport(cfg.page_listen, 8080, flag="page.listen")[1])
    if any(0 < p < 1024 for p in ports):
        extra += ["AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
    template = Path(__file__).with_name(UNIT).read_text()
    return template.format(exe=exe, config=config, user=user, group=group or user, state=state, extra="\n".join(extra)).replace("\n\n\n", "\n\n")


def _group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def agent_files(cfg, config):
    """What the service user must own: its config, its node keys file, its state directory."""
    files = [Path(config)]
    if cfg.node_keys_file:
        files.append(Path(cfg.node_keys_file))
    return files


# What the agent itself keeps in state.dir: anything else there is not its to take over.
AGENT_FILES = re.compile(r"queue\.sqlite.*|boot-.*|ota")
SYSTEM_DIRS = {Path(p) for p in ("/", "/etc", "/usr", "/var", "/var/lib", "/var/cache", "/srv", "/opt", "/home",
                                 "/tmp", "/var/tmp", "/root", "/boot", "/dev", "/proc", "/sys", "/run", "/mnt", "/media")}


def _own_state_dir(state):
    """A UserError unless state.dir is a directory of the agent's own: install-service makes it the
    service user's, recursively, and 0700."""
    if state in SYSTEM_DIRS:
        raise UserError(f"state.dir {state} is a system directory: give the agent one of its own "
                        f"(dir = \"/var/lib/openpole\")")
    if state.is_dir():
        strangers = sorted(p.name for p in state.iterdir() if not AGENT_FILES.fullmatch(p.name))
        if strangers:
            raise UserError(f"state.dir {state} holds files that are not the agent's ({', '.join(strangers[:3])}): "
                            f"give the agent a directory of its own (dir = \"/var/lib/openpole\")")


def systemd_running():
    """sd_booted(3): systemd is PID 1 when /run/systemd/system exists."""
    return Path("/run/systemd/system").is_dir()


def install(config, user, unit_dir, start=True):
    """Write the unit for `config` (made for `user`), the user and the state directory; enable and
    start the service unless start is False. Returns what was done, one line each."""
    from . import config as config_mod

    config = Path(config).resolve()
    if not config.is_file():
        raise UserError(f"{config}: no such config; start from edge_agent/sample.toml (openpole pole init writes one)")
    cfg = config_mod.load(config)
    state = Path(cfg.state_dir).resolve()
    _own_state_dir(state)
    beside = Path(sys.executable).with_name("openpole")  # the console script of this very install
    exe = str(beside) if beside.exists() else shutil.which("openpole") or f"{sys.executable} -m openpole"
    done = [f"warning: {what} {p} lies under {hidden(p)}, which the service cannot see (ProtectHome, PrivateTmp): "
            f"move it ({fix})"
            for what, p, fix in (("the config", config, "to /etc/openpole"), ("state.dir", state, "to /var/lib/openpole"),
                                 ("the openpole command", Path(exe.split()[0]), "install openpole in a venv under /opt"))
            if hidden(p)]
    root = os.geteuid() == 0
    if root:
        if ensure_user(user, state):
            done.append(f"made the system user {user}")
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        hand_over(user, [state, *agent_files(cfg, config)])
        done.append(f"{user} owns {state} and the agent's config and keys")
    else:
        try:
            pwd.getpwnam(user)
        except KeyError:
            done.append(f"the user {user} does not exist yet: `sudo {' '.join(useradd_command(user, state))}` "
                        f"(or run this command as root)")
        owned = " ".join(str(p) for p in [state, *agent_files(cfg, config)])
        done.append(f"then, as root: `sudo install -d -m 0700 {state} && sudo chown -R {user}: {owned}`")
    try:
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        group = user  # useradd --user-group makes one of the user's name
    unit = unit_text(cfg, config, exe, user, group)
    target = Path(unit_dir) / UNIT
    try:
        target.write_text(unit)
    except PermissionError:
        raise UserError(f"cannot write {target}: run it as root (sudo openpole edge install-service ...)") from None
    except FileNotFoundError:
        raise UserError(f"{unit_dir} does not exist: is this a systemd machine? (or pass --unit-dir)") from None
    done.append(f"wrote {target}")
    if not start:
        return done
    if not root:
        raise UserError("systemctl needs root: sudo openpole edge install-service ...")
    if not systemd_running() or shutil.which("systemctl") is None:
        raise UserError(f"systemd does not run this machine: the unit is written, but start the agent with "
                        f"`openpole edge run --config {config}` instead")
    for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", UNIT]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            last = ((r.stderr or r.stdout).strip().splitlines() or ["no output"])[-1]
            raise UserError(f"{' '.join(cmd)} failed: {last}")
    done.append(f"{UNIT} enabled and started: journalctl -u {UNIT} -f shows its log, openpole edge status its state")
    return done
