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
    (("noise", "analyze", "/"), "openpole: /: Is a directory"),
    (("conformance", "--capture", sys.executable, "--node-id", "n1"), "not a capture (binary data"),
    (("sim", "node", "--image", "/nonexistent/node.bin"), "openpole: /nonexistent/node.bin: No such file or directory"),
    (("receiver", "--listen", "127.0.0.1:notaport"), "--listen '127.0.0.1:notaport': expected HOST:PORT"),
    (("pole", "init", "--site", "/nonexistent/site", "--out", "/nonexistent/out", "--listen", "0.0.0.0:x"),
     "--listen '0.0.0.0:x': expected HOST:PORT"),
    (("pole", "init", "--site", "/nonexistent/site", "--out", "/nonexistent/out", "--tls", "0.0.0.0:99999"),
     "--tls '0.0.0.0:99999': expected HOST:PORT"),
    (("sim", "board", "--flash", "/nonexistent/dir/flash.bin"), "/nonexistent/dir/flash.bin: No such file or directory"),
])
def test_user_errors_are_one_line(args, message):
    code, out, err = openpole(*args)
    assert code == 2
    assert err.strip().splitlines() == [f"openpole: {err.strip().removeprefix('openpole: ')}"]
    assert message in err and "Traceback" not in err


def test_spec_check_keeps_an_absolute_path_whole():
    code, out, err = openpole("spec", "check", "--specs", "/nonexistent/specs")
    assert code != 0 and "/nonexistent/specs/units.toml" in out + err


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    from openpole import cli
    from openpole.field import ports

    def broken():
        raise KeyError("no such sensor")

    monkeypatch.setattr(ports, "candidates", broken)  # a bug inside a real command
    assert cli.main(["ports"]) == 70
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["openpole: unexpected error: KeyError: 'no such sensor' (run again with --debug "
                                        "for the traceback, and report it)"]
    assert cli.main(["--debug", "ports"]) == 70
    assert "Traceback" in capsys.readouterr().err


def test_sample_config_loads_and_matches_the_defaults():
    cfg = config.load(paths.ROOT / "edge_agent" / "sample.toml")
    assert cfg == config.AgentConfig()


def test_config_values_and_keys_are_read(tmp_path):
    f = tmp_path / "agent.toml"
    key = "00112233445566778899aabbccddeeff"
    f.write_text(f'[pole]\nid = "p7"\n[broker]\nport = 1884\npassword = "s3cret"\n[nodes.keys]\nn1 = "{key}"\n'
                 '[state]\ndir = "queue"\n')
    cfg = config.load(f, broker_host="10.0.0.2")
    assert (cfg.pole_id, cfg.broker_port, cfg.broker_host, cfg.node_keys) == ("p7", 1884, "10.0.0.2",
                                                                               {"n1": bytes.fromhex(key)})
    assert "s3cret" not in repr(cfg) and key not in repr(cfg)
    assert cfg.state_dir == tmp_path / "queue"  # a relative state.dir lies beside its config, as keys_file does


@pytest.mark.parametrize("text, why", [
    ('[nodes.keys]\nn1 = ""\n', "nodes.keys.n1 is 0 bytes"),
    ('[nodes.keys]\nn1 = "ab"\n', "nodes.keys.n1 is 1 bytes"),
    ('[nodes.keys]\nn1 = "xyz"\n', "nodes.keys.n1 must be the node's key in hex"),
    ('[upstream]\nkey = ""\n', "upstream.key is 0 bytes"),
    ('[page]\nlisten = "127.0.0.1:8080"\nopen_read = false\n', "page.open_read = false needs page.password_hash"),
])
def test_keys_that_sign_nothing_and_a_page_open_by_mistake_stop_the_agent_at_start(tmp_path, text, why):
    f = tmp_path / "agent.toml"
    f.write_text(text)
    code, out, err = openpole("edge", "run", "--config", str(f))
    assert code == 2 and why in err and "Traceback" not in err, err


def test_bad_config_value_is_a_one_line_error(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text("[broker]\nport = \"eighteen\"\n")
    code, out, err = openpole("edge", "run", "--config", str(f))
    assert code == 2 and f"config {f}: broker.port must be a whole number, not 'eighteen'" in err and "Traceback" not in err


def test_every_command_has_a_purpose_and_an_example_in_its_help():
    import argparse

    from openpole.cli import build_parser

    missing = []

    def walk(parser, path):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        text = (parser.description or "").lower()
        if path and "example" not in text:
            missing.append(" ".join(path))
        for a in subs:
            for name, sub in a.choices.items():
                if not any(c.dest == name and c.help for c in a._choices_actions):
                    missing.append(" ".join(path + (name,)) + " (no one-line help)")
                walk(sub, path + (name,))

    walk(build_parser(), ())
    # groups of subcommands (image, config, pole, spec, sim, edge, noise, ota) carry their examples on each action
    groups = {"image", "config", "pole", "spec", "sim", "edge", "noise", "city", "ota"}
    assert [m for m in missing if m not in groups] == []


def test_host_and_port_as_a_user_types_them():
    from openpole.common import parse_hostport
    from openpole.errors import UserError

    assert parse_hostport("10.0.0.2:1884") == ("10.0.0.2", 1884)
    assert parse_hostport("broker") == ("broker", 1883)
    assert parse_hostport("[::1]:1884") == ("::1", 1884)
    assert parse_hostport("::1") == ("::1", 1883)  # a bare IPv6 address is a host, not host ':' and port 1
    for bad in ("host:", "host:99999", ":1883", "[::1]:x"):
        with pytest.raises(UserError, match="expected HOST:PORT"):
            parse_hostport(bad)
