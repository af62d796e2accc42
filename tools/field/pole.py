"""`openpole pole init`: the pole's Mosquitto and edge-agent files, from the site's inventory.

Written under OUT as they go on the Pi (OUT=/ installs them):
  etc/mosquitto/conf.d/openpole.conf   listeners, no anonymous clients, TCP_NODELAY, queue limits
  etc/mosquitto/certs/openpole-*       with --tls: the site CA's certificate, the broker's (signed by it) and its key
  etc/mosquitto/openpole.passwd        one user per node and one for the agent (PBKDF2-SHA512)
  etc/mosquitto/openpole.acl           a node publishes only to its own topics, reads only its cmd, ack and ota
  etc/openpole/node-keys.toml          the agent's table of node keys (mode 0600)
  etc/openpole/agent.toml              the agent's config, written once (your edits are kept)
"""

import base64
import hashlib
import os
import secrets as rnd
from pathlib import Path

from ..common import parse_hostport
from ..errors import UserError
from .site import write_file

# mosquitto_passwd's format since Mosquitto 2.0: $7$ = PBKDF2-HMAC-SHA512, 101 iterations,
# 12-byte salt, all base64.
PBKDF2_ITERATIONS = 101
AGENT_USER = "openpole"  # what `openpole edge install-service` runs the agent as


def password_line(user, password, salt=None):
    salt = salt or rnd.token_bytes(12)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"{user}:$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def acl(agent_user, node_ids):
    lines = ["# openpole: written by `openpole pole init`; run it again after flashing nodes.",
             "", f"user {agent_user}", "topic read openpole/v1/#", "topic write openpole/v1/+/cmd",
             "topic write openpole/v1/+/ack", "topic write openpole/v1/+/ota", ""]
    for n in sorted(node_ids):  # OTA (docs/ota.md): the node reads its tickets and chunks, writes requests and reports
        lines += [f"user {n}"] + [f"topic write openpole/v1/{n}/{t}" for t in ("data", "status", "diag", "ota/get", "ota/report")]
        lines += [f"topic read openpole/v1/{n}/{t}" for t in ("cmd", "ack", "ota")] + [""]
    return "\n".join(lines)


def main_conf_keys(out):
    """The options Debian's /etc/mosquitto/mosquitto.conf (under OUT) sets already: Mosquitto 2.0
    refuses to start when an included file sets some of them again (persistence_location)."""
    path = Path(out) / "etc" / "mosquitto" / "mosquitto.conf"
    try:
        text = path.read_text()
    except OSError:
        return set()
    return {line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}


def mosquitto_conf(listen, passwd, aclfile, n_nodes, persistence_dir=None, main_keys=frozenset(), tls=None):
    """tls: (HOST:PORT, cafile, certfile, keyfile) for a TLS listener beside the plain one."""
    host, port = parse_hostport(listen, 1883, flag="--listen")
    # The agent's persistent session holds what arrives while it restarts: an hour of one message
    # a second from every node, and at least 10000.
    queued = max(10000, n_nodes * 3600)
    lines = ["# openpole: written by `openpole pole init`.",
             f"listener {port} {host}".rstrip(),
             "allow_anonymous false",
             f"password_file {passwd}",
             f"acl_file {aclfile}",
             "use_username_as_clientid true # a node's credentials cannot take another client's id (the agent's)",
             "set_tcp_nodelay true          # QoS 1 round trips in 0.1 ms instead of 40-90 ms",
             f"max_queued_messages {queued}",
             "max_inflight_messages 4096    # the agent acknowledges in groups: let the broker send ahead",
             "max_packet_size 65536         # node messages are ~100 bytes; refuse anything absurd"]
    persistence = {"persistence": "persistence true", "autosave_interval": "autosave_interval 60"}
    if persistence_dir:
        persistence["persistence_location"] = f"persistence_location {persistence_dir}/"
    lines += [line for key, line in persistence.items() if key not in main_keys]  # the main config's stand
    if tls:
        t_host, t_port = parse_hostport(tls[0], 8883, flag="--tls")
        # Listener options (allow_anonymous, the password file, the ACL) are global: per_listener_settings is off.
        lines += ["", "# TLS for the nodes: they check this certificate against the site CA (ca.der on each node).",
                  f"listener {t_port} {t_host}".rstrip(), f"cafile {tls[1]}", f"certfile {tls[2]}", f"keyfile {tls[3]}",
                  "tls_version tlsv1.2"]
    return "\n".join(lines) + "\n"


def _toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def init(site, out, listen="0.0.0.0:1883", pole_id="pole", persistence_dir=None, tls_listen=None, tls_names=()):
    """Write the files; returns {what: path}. tls_listen: HOST:PORT of a TLS listener for the nodes,
    with a certificate for tls_names (the host names or addresses the nodes use for the broker)."""
    parse_hostport(listen, 1883, flag="--listen")  # a bad flag is one line before anything is written
    if tls_listen:
        parse_hostport(tls_listen, 8883, flag="--tls")
    nodes = site.nodes()
    if not nodes:
        raise UserError(f"{site.inventory}: no nodes in the inventory: flash a node first")
    out = Path(out)
    if os.geteuid() == 0 and out.resolve() == Path("/"):
        # Installing on this Pi: the agent's user first, so its keys and config are its own from the start.
        from openpole.edge_agent.service import ensure_user

        ensure_user(AGENT_USER, "/var/lib/openpole")
    etc_m, etc_o = out / "etc" / "mosquitto", out / "etc" / "openpole"

    def on_pi(path):
        """Where a file written under OUT is once OUT's tree is the Pi's root (DESTDIR's rule): the
        paths inside the files are the Pi's, so etc/ can be copied over /etc as it is."""
        return Path("/") / Path(path).resolve().relative_to(out.resolve())
    agent = site.agent_secrets()
    users = [password_line(agent["broker_user"], agent["broker_password"])]
    keys = []
    for n in sorted(nodes):
        s = site.node_secrets(n) if site.secrets_path(n).exists() else None
        if s is None:
            raise UserError(f"{site.secrets_path(n)}: missing: node {n} cannot be trusted without it; "
                            f"reflash it (`openpole flash ... --node-id {n}`)")
        users.append(password_line(s["broker_user"], s["broker_password"]))
        keys.append(f"{_toml_str(n)} = {_toml_str(s['key'])}")
    files = {
        "passwd": etc_m / "openpole.passwd",
        "acl": etc_m / "openpole.acl",
        "conf": etc_m / "conf.d" / "openpole.conf",
        "keys": etc_o / "node-keys.toml",
        "agent": etc_o / "agent.toml",
    }
    write_file(files["passwd"], "\n".join(users) + "\n", private=True, owner="mosquitto")
    write_file(files["acl"], acl(agent["broker_user"], nodes))
    tls_conf = None
    if tls_listen:
        from . import tls

        if not tls_names:
            raise UserError("--tls: give the broker's name or address as the nodes know it (--tls-name)")
        ca_cert, ca_key = site.ca()
        crt, key = tls.server_cert(ca_cert, ca_key, list(tls_names))
        certs = etc_m / "certs"
        files.update(ca=certs / "openpole-ca.crt", cert=certs / "openpole-server.crt", key=certs / "openpole-server.key")
        write_file(files["ca"], tls.pem(ca_cert))
        write_file(files["cert"], crt)
        write_file(files["key"], key, private=True, owner="mosquitto")
        tls_conf = (tls_listen, on_pi(files["ca"]), on_pi(files["cert"]), on_pi(files["key"]))
    write_file(files["conf"], mosquitto_conf(listen, on_pi(files["passwd"]), on_pi(files["acl"]), len(nodes),
                                             persistence_dir, main_conf_keys(out), tls=tls_conf))
    # The agent runs as its own user (the unit's User=openpole): its files are that user's.
    write_file(files["keys"], "# openpole node keys: node id = key in hex. Written by `openpole pole init`.\n"
                          "[nodes.keys]\n" + "\n".join(keys) + "\n", private=True, owner=AGENT_USER)
    from openpole.edge_agent.password import hash_password

    page = ("\n[page]\n# The pole's web page: uncomment listen to serve it (openpole edge run --page does too).\n"
            "# listen = \"0.0.0.0:8080\"\n"
            f"password_hash = {_toml_str(hash_password(agent['page_password']))}  # the password: in the site's "
            f"secrets, _edge-agent.json\nopen_read = true\n")
    if files["agent"].exists():
        text = files["agent"].read_text()
        if "[page]" not in text:  # a pole set up before the page: the section is added, the rest kept
            write_file(files["agent"], text.rstrip("\n") + "\n" + page, private=True, owner=AGENT_USER)
    if not files["agent"].exists():
        host, port = parse_hostport(listen, 1883, flag="--listen")
        write_file(files["agent"], (
            "# openpole edge agent: written once by `openpole pole init`; edit freely (see `openpole edge run --help`).\n"
            f"[pole]\nid = {_toml_str(pole_id)}\n\n"
            f"[broker]\nhost = \"127.0.0.1\"\nport = {int(port)}\n"
            f"user = {_toml_str(agent['broker_user'])}\npassword = {_toml_str(agent['broker_password'])}\n\n"
            # Beside agent.toml, wherever etc/ ends up: the agent reads keys_file relative to its config.
            f"[nodes]\nrequire_mac = true\nkeys_file = \"{files['keys'].name}\"\n{page}"), private=True,
            owner=AGENT_USER)
    return files
