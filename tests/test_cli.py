"""Errors a user can meet say what went wrong and what to do, in one line, without a traceback."""

import subprocess
import sys

import pytest

from openpole import paths
from openpole.edge_agent import config


def openpole(*args):
    r = subprocess.run([sys.executable, "-m", "openpole", *args], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("args,message", [
    (("receiver", "stats", "--data", "/nonexistent/openpole"), "no receiver data in /nonexistent/openpole"),
    (("sim", "node", "--broker", "localhost:notaport", "--cycles", "1"), "--broker 'localhost:notaport': expected HOST:PORT"),
    (("edge", "run", "--config", "/nonexistent/agent.toml"), "cannot read config /nonexistent/agent.toml"),
])
def test_user_errors_are_one_line(args, message):
    code, out, err = openpole(*args)
    assert code == 2
    assert err.strip().splitlines() == [f"openpole: {err.strip().removeprefix('openpole: ')}"]
    assert message in err and "Traceback" not in err


def test_sample_config_loads_and_matches_the_defaults():
    cfg = config.load(paths.ROOT / "edge_agent" / "sample.toml")
    assert cfg == config.AgentConfig()


def test_config_values_and_keys_are_read(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text('[pole]\nid = "p7"\n[broker]\nport = 1884\npassword = "s3cret"\n[nodes.keys]\nn1 = "0011"\n')
    cfg = config.load(f, broker_host="10.0.0.2")
    assert (cfg.pole_id, cfg.broker_port, cfg.broker_host, cfg.node_keys) == ("p7", 1884, "10.0.0.2", {"n1": b"\x00\x11"})
    assert "s3cret" not in repr(cfg) and "0011" not in repr(cfg)


def test_bad_config_value_is_a_one_line_error(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text("[broker]\nport = \"eighteen\"\n")
    code, out, err = openpole("edge", "run", "--config", str(f))
    assert code == 2 and f"config {f}: broker.port must be a whole number, not 'eighteen'" in err and "Traceback" not in err
