"""`openpole city load`'s settings (--config, the flags over it, the sample in docs/city.md) and its
upkeep on a timer: the aggregates folded every aggregates.every_s by a running loader, against a
real nats-server and PostgreSQL; a node message sent again, at any age, is stored once."""

import json
import re
import subprocess
import sys
import time
import tomllib
import urllib.request

import pytest
from helpers import wait
from pgcluster import PgServer

from openpole import paths
from openpole.errors import UserError
from openpole.sim.broker import free_port


def openpole(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def docs_sample():
    """The commented sample in docs/city.md, as written there."""
    text = (paths.ROOT / "docs" / "city.md").read_text()
    return re.search(r"## openpole city load settings.*?(?=\n```)", text, re.S).group(0)


def test_the_sample_in_the_docs_names_every_setting_and_its_defaults(tmp_path):
    from openpole.city import config

    sample = docs_sample()
    uncommented = re.sub(r"^# ", "", sample, flags=re.M)  # every setting as the sample shows it
    f = tmp_path / "load.toml"
    f.write_text(uncommented)
    cfg = config.load(f)  # every key known, every value of its type
    data = tomllib.loads(uncommented)
    shown = {(s, k) for s, t in data.items() for k in t}
    assert shown == set(config._KEYS), shown ^ set(config._KEYS)
    default = config.LoadConfig()
    for (section, key), (attr, _) in config._KEYS.items():
        if getattr(default, attr) is not None:  # a setting with a default: the sample shows that default
            assert getattr(cfg, attr) == getattr(default, attr), (section, key)
    f.write_text(sample)  # as shipped, all commented: the defaults, and the DSN still to give
    with pytest.raises(UserError, match="give --nats URL"):
        config.load(f)


def test_the_file_is_read_and_the_flags_override_it(tmp_path):
    from openpole.city import config

    f = tmp_path / "etc" / "load.toml"
    f.parent.mkdir()
    f.write_text('[nats]\nurl = "nats://n1:4222"\n[db]\ndsn = "postgresql://u:secret@db/city"\n'
                 '[load]\nkeys = "poles.toml"\ngroup = 50\nquiet = true\n[aggregates]\nevery_s = 3\n')
    cfg = config.load(f, group=7, name="l1")
    assert (cfg.nats, cfg.group, cfg.name, cfg.quiet, cfg.aggregate_every_s) == ("nats://n1:4222", 7, "l1", True, 3)
    assert cfg.keys == str(tmp_path / "etc" / "poles.toml")  # next to the file
    assert "secret" not in repr(cfg)
    assert config.load(f, aggregate_every_s=0.0).aggregate_every_s == 0


@pytest.mark.parametrize("text,error", [
    ('[load]\ngroupe = 5\n', "unknown setting load.groupe (known in [load]: group, keys, metrics, name, quiet)"),
    ('[loader]\ngroup = 5\n', "unknown section [loader] (known: aggregates, db, load, nats)"),
    ('[load]\ngroup = "5"\n', "load.group must be a whole number, not '5'"),
    ('[load]\nquiet = "yes"\n', "load.quiet must be true or false, not 'yes'"),
    ('[aggregates]\nevery_s = "10s"\n', "aggregates.every_s must be a number, not '10s'"),
    ('[aggregates]\nevery_s = -1\n', "aggregates.every_s: 0 (off) to 86400 seconds"),
    ('[load]\ngroup = 0\n', "load.group: at least 1 batch"),
    ('[load]\nmetrics = "localhost:port"\n', "load.metrics"),
    ("load = [", "is not valid TOML"),
])
def test_a_wrong_setting_stops_the_loader_at_start_in_one_line(tmp_path, text, error):
    f = tmp_path / "load.toml"
    base = '[nats]\nurl = "nats://127.0.0.1:9"\n[db]\ndsn = "postgresql://openpole@127.0.0.1:9/x"\n'
    f.write_text(base + text if "[" in text.split("\n")[0] and "load = [" not in text else text)
    r = openpole("city", "load", "--config", f)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and error in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_without_a_server_to_load_from_it_says_which(tmp_path):
    r = openpole("city", "load", "--db", "postgresql://x@127.0.0.1:9/x")
    assert r.returncode == 2 and "give --nats URL (nats.url), as a flag or in --config FILE" in r.stderr, r.stderr
    r = openpole("city", "load", "--config", tmp_path / "none.toml")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "none.toml" in r.stderr, r.stderr


def _scrape(port, metric):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as m:
            for line in m.read().decode().splitlines():
                if line.startswith(metric + " "):
                    return float(line.split()[1])
    except OSError:
        return None


def test_a_running_loader_folds_the_aggregates_on_its_timer_and_stores_a_resent_message_once(tmp_path):
    import psycopg
    from natscluster import NatsCluster
    from test_city_migration import KEY as key
    from test_city_migration import signed

    from openpole.edge_agent.sinks import NatsSink

    pg = PgServer()
    lone = NatsCluster(tmp_path / "nats", 1)
    t0_ns = time.time_ns() - 60 * 10**9
    (tmp_path / "poles.toml").write_text(f'p1 = "{key.hex()}"\n')
    procs = []

    def loader(every, name):
        f = tmp_path / f"{name}.toml"
        f.write_text(f'[nats]\nurl = "{lone.url}"\n[db]\ndsn = "{pg.dsn}"\n[load]\nkeys = "poles.toml"\nquiet = true\n'
                     f'name = "{name}"\nmetrics = "127.0.0.1:{metrics}"\n[aggregates]\nevery_s = {every}\n')
        p = subprocess.Popen([sys.executable, "-m", "openpole", "city", "load", "--config", str(f)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        assert wait(lambda: p.poll() is not None or _scrape(metrics, "openpole_city_batches_total") is not None,
                    timeout=30), p.communicate()
        return p

    def waiting():
        with psycopg.connect(pg.dsn) as conn:
            return conn.execute("SELECT (SELECT count(*) FROM aggregate_queue), (SELECT coalesce(sum(count), 0) "
                                "FROM hourly)").fetchone()

    try:
        r = openpole("city", "init", "--nats", lone.url, "--replicas", "1", "--db", pg.dsn)
        assert r.returncode == 0, r.stdout + r.stderr
        sink = NatsSink(lone.url, pole="p1")
        metrics = free_port()
        # A loader whose timer is an hour away: the groups it loads wait in the queue.
        slow = loader(3600, "slow")
        sink.send(*signed("p1", "n1", 1, range(10), t0_ns))  # 10 node messages of 4 readings
        assert wait(lambda: _scrape(metrics, "openpole_city_readings_loaded_total") == 40, timeout=30)
        time.sleep(3)
        assert waiting() == (1, 0)  # loaded, not folded: no group folds, only the timer
        slow.terminate()
        slow.wait(timeout=30)
        # One every 1.5 s: the queue is folded while the loader runs on, with nothing to load.
        fast = loader(1.5, "fast")
        t0 = time.monotonic()
        assert wait(lambda: waiting() == (0, 40), timeout=20), waiting()
        assert time.monotonic() - t0 < 10
        assert _scrape(metrics, "openpole_city_aggregate_blocks_folded_total") == 1
        sink.send(*signed("p1", "n1", 1, range(10, 20), t0_ns))
        assert wait(lambda: waiting() == (0, 80), timeout=20), waiting()
        # Messages of both batches again, as a pole re-sends its queue (the same records, a new batch
        # id), after both were loaded and folded: stored once, counted as duplicates.
        sink.send(*signed("p1", "n1", 1, range(5, 15), t0_ns))
        assert wait(lambda: _scrape(metrics, "openpole_city_readings_received_total") == 80, timeout=30)
        time.sleep(3)
        assert waiting() == (0, 80)
        fast.terminate()
        fast.wait(timeout=30)
        st = json.loads(openpole("city", "stats", "--db", pg.dsn, "--json").stdout)
        assert (st["unique"], st["duplicates"]) == (80, 40), st
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 80
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
        lone.stop()
        pg.stop()
