"""`openpole pole init` against a real Mosquitto started with the files it writes: each node may
publish only to its own topics and read only its own command topic; the agent reads them all;
a wrong password is refused; the agent's config loads the node keys."""

import base64
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from helpers import wait

from openpole.edge_agent import config as agent_config
from openpole.errors import UserError
from openpole.field import pole
from openpole.field.site import Site
from openpole.sim import node as simnode
from openpole.sim.broker import free_port, mosquitto_path


def openpole(*args):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True, timeout=60)


class Client:
    def __init__(self, port, user, password, subscribe=None, client_id=None):
        self.got = []
        self.rc = None
        self.ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{user}-{os.urandom(3).hex()}")
        c.username_pw_set(user, password)

        def on_connect(cl, u, flags, rc, props):
            self.rc = rc
            if subscribe and not rc.is_failure:
                cl.subscribe(subscribe, qos=1)
            else:
                self.ready.set()

        c.on_connect = on_connect
        c.on_subscribe = lambda *a: self.ready.set()
        c.on_message = lambda cl, u, m: self.got.append(m.topic)
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert self.ready.wait(10)
        self.c = c

    def publish(self, topic):
        self.c.publish(topic, b"x", qos=1).wait_for_publish(5)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path / "site")
    for n in ("pole1-a", "pole1-b"):
        s.node_secrets(n)
        s.record(node_id=n, mac="24:0a:c4:00:00:01", board="esp32-devkitc", chip="ESP32", app="x", how="flash")
    return s


# Debian's /etc/mosquitto/mosquitto.conf (mosquitto 2.0.11-1.2+deb12u2), its paths moved into the
# test's directory. It sets persistence_location: an included file that sets it again stops
# Mosquitto 2.0.11 from starting ("Duplicate persistence_location").
DEBIAN_MAIN_CONF = """# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file {tmp}/mosquitto.pid

persistence true
persistence_location {tmp}/mosq/

log_dest stdout

include_dir {etc}/mosquitto/conf.d
"""


def _debian_main_conf(tmp_path):
    """(etc under tmp_path/out, Debian's main mosquitto.conf written there); its persistence dir made."""
    (tmp_path / "mosq").mkdir()
    etc = tmp_path / "out" / "etc"
    main_conf = etc / "mosquitto" / "mosquitto.conf"
    main_conf.parent.mkdir(parents=True)
    # As root, stay root: pytest's temporary directory is private, where /etc/mosquitto is not.
    main_conf.write_text(("user root\n" if os.geteuid() == 0 else "") + DEBIAN_MAIN_CONF.format(tmp=tmp_path, etc=etc))
    return etc, main_conf


def _installed(etc):
    """What copying etc/ over /etc would do, without touching /etc: the paths `pole init` wrote are
    the Pi's (/etc/mosquitto/...); here they lead into the test's etc instead."""
    conf = etc / "mosquitto" / "conf.d" / "openpole.conf"
    text = conf.read_text()
    assert f"{etc}" not in text and " /etc/mosquitto/openpole.passwd" in text  # the Pi's paths, not OUT's
    conf.write_text(text.replace(" /etc/", f" {etc}/"))


def _agent_client(broker, port, agent_cfg, timeout_s=10):
    """The agent's client on the broker just started, polled until it listens."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return Client(port, agent_cfg.broker_user, agent_cfg.broker_password, subscribe="openpole/v1/#")
        except (ConnectionRefusedError, OSError):
            assert time.monotonic() < deadline, broker.stdout.read() if broker.poll() is not None else "no broker"
            time.sleep(0.2)


def test_pole_init_writes_a_broker_that_fences_each_node(site, tmp_path):
    port = free_port()
    etc, main_conf = _debian_main_conf(tmp_path)
    r = openpole("pole", "init", "--site", site.root, "--out", tmp_path / "out", "--listen", f"127.0.0.1:{port}",
                 "--pole-id", "pole1")
    assert r.returncode == 0, r.stderr
    passwd = etc / "mosquitto" / "openpole.passwd"
    assert stat.S_IMODE(os.stat(passwd).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(etc / "openpole" / "node-keys.toml").st_mode) == 0o600
    secrets = {n: site.node_secrets(n) for n in ("pole1-a", "pole1-b")}
    for n, s in secrets.items():
        assert s["broker_password"] not in passwd.read_text()  # hashed, never in clear
    conf = (etc / "mosquitto" / "conf.d" / "openpole.conf").read_text()
    assert "set_tcp_nodelay true" in conf and "allow_anonymous false" in conf and "max_queued_messages" in conf
    assert "persistence_location" not in conf and "use_username_as_clientid true" in conf
    _installed(etc)
    broker = subprocess.Popen([mosquitto_path(), "-c", str(main_conf)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        agent_cfg = agent_config.load(etc / "openpole" / "agent.toml")
        agent = _agent_client(broker, port, agent_cfg)
        assert not agent.rc.is_failure
        a = Client(port, "pole1-a", secrets["pole1-a"]["broker_password"], subscribe="openpole/v1/+/cmd")
        b = Client(port, "pole1-b", secrets["pole1-b"]["broker_password"], subscribe="openpole/v1/+/ota")
        a.publish("openpole/v1/pole1-a/data")
        a.publish("openpole/v1/pole1-a/ota/get")     # OTA: its own requests and reports reach the agent
        a.publish("openpole/v1/pole1-a/ota/report")
        a.publish("openpole/v1/pole1-a/ota")         # ... but it cannot write its own ticket topic
        a.publish("openpole/v1/pole1-b/ota/get")     # nor ask for another node's job
        agent.publish("openpole/v1/pole1-a/ota")
        agent.publish("openpole/v1/pole1-b/ota")     # b reads its own ota topic, not a's
        a.publish("openpole/v1/pole1-a/status")
        a.publish("openpole/v1/pole1-b/data")   # a node posing as another: dropped by the ACL
        a.publish("openpole/v1/pole1-a/cmd")    # a node commanding itself: not allowed either
        b.publish("openpole/v1/pole1-b/diag")
        agent.publish("openpole/v1/pole1-a/cmd")
        agent.publish("openpole/v1/pole1-b/cmd")
        # Sentinels last: the broker keeps each client's order, so once they arrive anything the
        # ACL let through before them has arrived too.
        a.publish("openpole/v1/pole1-a/status")
        agent.publish("openpole/v1/pole1-a/cmd")
        assert wait(lambda: agent.got.count("openpole/v1/pole1-a/status") == 2 and a.got.count("openpole/v1/pole1-a/cmd") == 2)
        assert wait(lambda: "openpole/v1/pole1-b/ota" in b.got)
        assert sorted(set(agent.got)) == ["openpole/v1/pole1-a/cmd", "openpole/v1/pole1-a/data", "openpole/v1/pole1-a/ota",
                                          "openpole/v1/pole1-a/ota/get", "openpole/v1/pole1-a/ota/report",
                                          "openpole/v1/pole1-a/status", "openpole/v1/pole1-b/cmd", "openpole/v1/pole1-b/diag",
                                          "openpole/v1/pole1-b/ota"]
        assert agent.got.count("openpole/v1/pole1-a/ota") == 1  # the agent's own, not the node's
        assert b.got == ["openpole/v1/pole1-b/ota"]
        assert "openpole/v1/pole1-b/data" not in agent.got  # a node posing as another: dropped by the ACL
        assert a.got == ["openpole/v1/pole1-a/cmd"] * 2  # its own command topic only
        bad = Client(port, "pole1-a", "not-the-password")
        assert bad.rc.is_failure
        # A node's credentials (in its flash, on a public pole) under the agent's client id: the
        # broker takes the user name as the id, so the agent is not kicked off.
        thief = Client(port, "pole1-b", secrets["pole1-b"]["broker_password"], client_id=agent.c._client_id.decode())
        n = agent.got.count("openpole/v1/pole1-b/cmd")
        agent.publish("openpole/v1/pole1-b/cmd")  # a round trip after the thief's connect
        assert wait(lambda: agent.got.count("openpole/v1/pole1-b/cmd") == n + 1) and agent.c.is_connected()
        for c in (agent, a, b, bad, thief):
            c.close()
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    assert agent_cfg.require_mac and agent_cfg.node_keys == {n: bytes.fromhex(s["key"]) for n, s in secrets.items()}
    # the pole's page: off until page.listen is set, its password kept on the laptop, its hash on the pole
    from openpole.edge_agent.password import check_password

    page_password = site.agent_secrets()["page_password"]
    assert not agent_cfg.page_listen and check_password(page_password, agent_cfg.page_password_hash)
    assert page_password not in (etc / "openpole" / "agent.toml").read_text()

    # Run again after one more node: the agent config you may have edited is kept, the keys follow.
    (etc / "openpole" / "agent.toml").write_text((etc / "openpole" / "agent.toml").read_text() + "\n[upstream]\nurl = \"https://city\"\n")
    site.node_secrets("pole1-c")
    site.record(node_id="pole1-c", board="esp32-devkitc", how="flash")
    assert openpole("pole", "init", "--site", site.root, "--out", tmp_path / "out", "--listen", f"127.0.0.1:{port}").returncode == 0
    cfg = agent_config.load(etc / "openpole" / "agent.toml")
    assert cfg.upstream == "https://city" and set(cfg.node_keys) == {"pole1-a", "pole1-b", "pole1-c"}
    assert (etc / "openpole" / "agent.toml").read_text().count("[page]") == 1
    # a pole set up before the page gets the section added, the rest kept
    text = (etc / "openpole" / "agent.toml").read_text()
    start, end = text.index("\n[page]"), text.index("open_read = true\n") + len("open_read = true\n")
    (etc / "openpole" / "agent.toml").write_text(text[:start] + "\n" + text[end:])
    assert openpole("pole", "init", "--site", site.root, "--out", tmp_path / "out", "--listen", f"127.0.0.1:{port}").returncode == 0
    cfg = agent_config.load(etc / "openpole" / "agent.toml")
    assert cfg.upstream == "https://city" and check_password(page_password, cfg.page_password_hash)


def test_password_lines_are_what_mosquitto_passwd_writes(tmp_path):
    line = pole.password_line("n1", "s3cret", salt=b"0123456789ab")
    user, _, h = line.partition(":")
    _, kind, rounds, salt, dk = h.split("$")
    assert (user, kind, rounds) == ("n1", "7", "101")
    assert base64.b64decode(dk) == hashlib.pbkdf2_hmac("sha512", b"s3cret", b"0123456789ab", 101)
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    f = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(f), "n1", "s3cret"], check=True)
    theirs = f.read_text().strip().split(":")[1].split("$")
    assert theirs[1:3] == ["7", "101"] and len(base64.b64decode(theirs[3])) == 12 and len(base64.b64decode(theirs[4])) == 64


def test_pole_init_without_an_inventory_says_what_to_do(tmp_path):
    r = openpole("pole", "init", "--site", tmp_path / "nothing", "--out", tmp_path / "out")
    assert r.returncode == 2 and "no inventory yet: flash a node first" in r.stderr


def _tls_node(app, world, tmp_path, name, port, secrets, ca_der, cycles=5):
    cfg = simnode.node_config(name, "127.0.0.1", port, interval_s=0.2, cycles=cycles, world=f"{world.host}:{world.port}",
                              sensors=("bme280",), ack="broker")
    cfg["broker"].update(user=secrets["broker_user"], password=secrets["broker_password"], tls=True, timeout_s=5,
                         backoff_max_s=1)
    state = simnode.write_config(tmp_path / name, cfg)
    (state / "ca.der").write_bytes(ca_der)
    return simnode.start(state, app, heap="256k", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_pole_init_tls_listener_takes_nodes_that_check_the_site_ca(site, tmp_path, app, world):
    port, tls_port = free_port(), free_port()
    etc, main_conf = _debian_main_conf(tmp_path)
    r = openpole("pole", "init", "--site", site.root, "--out", tmp_path / "out", "--listen", f"127.0.0.1:{port}",
                 "--tls", f"127.0.0.1:{tls_port}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--tls-name" in r.stderr  # one line, what to add
    r = openpole("pole", "init", "--site", site.root, "--out", tmp_path / "out", "--listen", f"127.0.0.1:{port}",
                 "--tls", f"127.0.0.1:{tls_port}", "--tls-name", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(etc / "mosquitto" / "certs" / "openpole-server.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(site.ca_dir / "ca.key").st_mode) == 0o600
    conf = (etc / "mosquitto" / "conf.d" / "openpole.conf").read_text()
    assert f"listener {tls_port} 127.0.0.1" in conf and "certfile /etc/mosquitto/certs/openpole-server.crt" in conf
    _installed(etc)
    broker = subprocess.Popen([mosquitto_path(), "-c", str(main_conf)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    other = Site(tmp_path / "another-site")  # a CA the broker's certificate is not from
    nodes = []
    try:
        agent_cfg = agent_config.load(etc / "openpole" / "agent.toml")
        agent = _agent_client(broker, port, agent_cfg)
        nodes.append(_tls_node(app, world, tmp_path, "pole1-a", tls_port, site.node_secrets("pole1-a"), site.node_ca()))
        other.ca()
        nodes.append(_tls_node(app, world, tmp_path, "pole1-b", tls_port, site.node_secrets("pole1-b"), other.node_ca(),
                               cycles=3))
        outs = [p.communicate(timeout=120)[0] for p in nodes]
        assert "done cycles=5 published=5 delivered=5 queued=0" in outs[0], outs[0][-1500:]
        # The node's PUBACKs can come before the broker's copies reach the agent's subscription.
        assert wait(lambda: agent.got.count("openpole/v1/pole1-a/data") == 5, timeout=5), agent.got
        # The node with the wrong CA refuses the broker: counted, logged, never a message sent.
        assert "published=0" in outs[1] and "Traceback" not in outs[1], outs[1][-1500:]
        assert "openpole/v1/pole1-b/data" not in agent.got
        agent.close()
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
        broker.terminate()
        broker.wait(timeout=10)


def test_a_tls_node_image_carries_the_site_ca_or_says_how_to_make_one(site, tmp_path):
    from openpole.field import image

    cfg = {"broker": {"host": "pole1.local", "tls": True}}
    with pytest.raises(UserError, match="pole init"):
        image.with_site_files({}, cfg, site)
    site.ca()
    files = image.with_site_files({"app.mpy": b"x"}, cfg, site)
    assert files["ca.der"] == site.node_ca() and files["ca.der"][0] == 0x30  # DER: a SEQUENCE
    assert image.with_site_files({"app.mpy": b"x"}, {"broker": {"host": "h"}}, site) == {"app.mpy": b"x"}
    # deploy updates the app and never takes the node's CA certificate away with old files
    from openpole.field.deploy import plan

    assert plan({"app.mpy": b"x"}, {"ca.der": "ab", "old.mpy": "cd"})[1] == ["old.mpy"]
