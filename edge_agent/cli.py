"""`openpole edge run`: the pole's edge agent."""

import logging
import signal
import threading
from pathlib import Path

from openpole.errors import UserError


def register(sub):
    p = sub.add_parser("edge", help="the pole's edge agent")
    esub = p.add_subparsers(dest="edge_command", metavar="ACTION", required=True)
    r = esub.add_parser("run", help="receive node messages, keep them on disk, send batches upstream")
    r.add_argument("--config", type=Path, help="agent config (TOML); see edge_agent/sample.toml")
    r.add_argument("--broker", help="HOST:PORT of the pole's MQTT broker (overrides the file)")
    r.add_argument("--upstream", help="base URL of the city receiver, e.g. http://127.0.0.1:8080")
    r.add_argument("--state", type=Path, help="directory for the durable queue")
    r.add_argument("--pole-id", help="this pole's id (used in the MQTT client id and upstream)")
    r.add_argument("--batch-interval", type=float, help="seconds a record may wait for its batch (default 10)")
    r.add_argument("--metrics-port", type=int, help="local port for /status and /metrics (default 9108; 0: off)")
    r.add_argument("--page", metavar="HOST:PORT", help="serve the pole's web page there (page.listen; default off)")
    r.set_defaults(func=run)
    i = esub.add_parser("install-service", help="install and start the agent as a systemd service, as its own user (as root)")
    i.add_argument("--config", type=Path, required=True, help="the agent config the service runs with")
    i.add_argument("--user", default="openpole", help="the user the agent runs as (default openpole)")
    i.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"), help="where the unit goes")
    i.add_argument("--no-start", action="store_true",
                   help="write the unit (and, as root, make the user and hand it its files); no systemctl enable --now")
    i.set_defaults(func=install_service)
    st = esub.add_parser("status", help="what the running agent is doing: nodes, queue, upstream, counters",
                         description="Ask the running agent (its metrics port), or read the queue's figures from its "
                                     "state directory when it is down. Examples: openpole edge status; "
                                     "openpole edge status --state /var/lib/openpole")
    st.add_argument("--port", type=int, default=9108, help="the agent's metrics.port (default 9108)")
    st.add_argument("--state", type=Path, help="read the queue in this state directory instead (the agent is down)")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.set_defaults(func=show_status)


def run(args):
    from openpole.common import parse_hostport

    from . import config
    from .agent import Agent

    host = port = None
    if args.broker:
        host, port = parse_hostport(args.broker)
    cfg = config.load(
        args.config, broker_host=host, broker_port=port, upstream=args.upstream, state_dir=args.state,
        pole_id=args.pole_id, batch_interval_s=args.batch_interval, metrics_port=args.metrics_port,
        page_listen=args.page,
    )
    from . import observe, timesync

    agent = Agent(cfg, clock_synced=timesync.clock_synced)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    from .sources import from_config

    sources = from_config(agent, cfg.sources)
    agent.start()
    for src in sources:
        src.start()
    try:
        observe.serve(agent, cfg.metrics_port)
    except OSError as e:
        logging.getLogger("openpole.edge").warning("metrics port %d: %s; /metrics and `edge status` are off", cfg.metrics_port, e.strerror)
    if cfg.page_listen:
        try:
            from .page import serve as serve_page
        except ImportError:
            raise UserError("page.listen is set but aiohttp is not installed: pip install 'openpole[page]'") from None
        try:
            url = serve_page(agent, cfg.page_listen).url
            logging.getLogger("openpole.edge").info("the pole's page: %s%s", url,
                                                    "" if cfg.page_password_hash else " (no password: actions off)")
        except OSError as e:
            logging.getLogger("openpole.edge").warning("page %s: %s; the page is off", cfg.page_listen, e.strerror)
    logging.getLogger("openpole.edge").info(
        "edge agent %s: broker %s:%d, upstream %s, state %s", cfg.pole_id, cfg.broker_host, cfg.broker_port,
        agent.sink.describe(), cfg.state_dir)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    for src in sources:
        src.stop.set()  # before the store closes
    agent.stop()
    return 0


def show_status(args):
    import json

    from . import observe

    st = observe.from_state(args.state) if args.state else observe.fetch(args.port)
    print(json.dumps(st) if args.json else observe.human(st))
    return 0


def install_service(args):
    from . import service

    for line in service.install(args.config, args.user, args.unit_dir, start=not args.no_start):
        print(line)
    return 0
