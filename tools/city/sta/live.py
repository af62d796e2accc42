"""New Observations as they are committed, rendered exactly as `GET Observations(id)` renders them:
the one source of the server-sent events (server.py) and of the MQTT publisher (publish.py).

A Feed follows the readings by sample id (ids grow as loaders commit). A loader's transaction that
commits after a later one still arrives: the feed looks back LOOKBACK ids and skips those it has
sent. There is no other replay: a client that was away fetches what it missed over HTTP.
"""

from . import render
from .sql import Params

LOOKBACK = 5000  # sample ids re-read on each poll: a slower loader's commit can land behind them
BATCH = 10_000  # rows fetched per poll at most


class Feed:
    def __init__(self, api):
        self.api = api
        self.E = api.entities["Observation"]
        self.mark = None  # the highest sample id sent
        self.sent = set()  # sample ids sent above mark - LOOKBACK

    async def start(self, conn, after=None):
        """Begin after sample id `after`, or after the newest committed one."""
        if after is None:
            row = await (await conn.execute("SELECT coalesce(max(id), 0) AS m FROM samples")).fetchone()
            after = row["m"]
        self.mark = self.floor = after  # nothing at or below the start is sent, however late it committed
        self.sent = set()

    async def poll(self, conn, where=None, values=None):
        """-> [(observation JSON, datastream id, thing id)] committed since the last poll, in id order.
        where: an extra condition over `e` (e.g. one Datastream's thing_id and key)."""
        E = self.E
        p = Params()
        lo = p(self.mark - LOOKBACK, "bigint")
        extra = f" AND ({where(p)})" if where else ""
        sql = (f"SELECT {self.api.columns(E, 'e', None, ['datastream_id', 'thing_id', 'sample_id'])} "
               f"FROM ({E.branches[0]}) AS e WHERE e.sample_id > {lo}{extra} ORDER BY e.sample_id, e.key "
               f"LIMIT {BATCH}")
        rows = await (await conn.execute(sql, p.values)).fetchall()
        out = []
        for r in rows:
            key = (r["k_sample_id"], r["k_id"])
            if key in self.sent or key[0] <= self.floor:
                continue
            self.sent.add(key)
            out.append((render.observation(E, r, self.api.base), r["k_datastream_id"], r["k_thing_id"]))
        if rows:
            self.mark = max(self.mark, max(r["k_sample_id"] for r in rows))
            floor = self.mark - LOOKBACK
            self.sent = {k for k in self.sent if k[0] > floor}
        return out


def topics(obs, datastream_id, thing_id, version="v1.1"):
    """The MQTT topics of one new Observation (OGC 18-088 §14.2.1 entity-set topics)."""
    return [f"{version}/Observations", f"{version}/Datastreams({datastream_id})/Observations",
            f"{version}/Things({thing_id})/Datastreams/Observations"]
