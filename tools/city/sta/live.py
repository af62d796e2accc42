"""New Observations as they are committed, rendered exactly as `GET Observations(id)` renders them:
the one source of the server-sent events (server.py) and of the MQTT publisher (feed.py).

A Feed follows the readings by sample id: loaders take ids in blocks of 4096 as they commit groups,
so a loader's group that commits after a later one's lies below the newest id. The feed looks back
LOOKBACK ids on each poll, skipping the samples it has sent (by id, in the query). There is no other
replay: a client that was away fetches what it missed over HTTP.
"""

from . import render
from .sql import Params

LOOKBACK = 4 * 4096  # four of the loaders' id blocks (tools/city/samples.py): groups committing out of order
BATCH = 10_000  # rows fetched per poll at most


class Feed:
    def __init__(self, api):
        self.api = api
        self.E = api.entities["Observation"]
        self.mark = self.floor = None  # the highest sample id seen; the one the feed began after
        self.sent, self.done = set(), set()

    async def start(self, conn, after=None):
        """Begin after sample id `after`, or after the newest committed one."""
        if after is None:
            row = await (await conn.execute("SELECT coalesce(max(id), 0) AS m FROM samples")).fetchone()
            after = row["m"]
        self.mark = self.floor = after  # nothing at or below the start is sent, however late it committed
        self.sent = set()  # (sample id, Observation id) sent above mark - LOOKBACK
        self.done = set()  # sample ids whose Observations are all sent, above mark - LOOKBACK

    async def poll(self, conn, where=None):
        """-> [(observation JSON, datastream id, thing id)] committed since the last poll, in id order.
        where: where(params) -> an extra condition over `e` (e.g. one Datastream's thing_id and key)."""
        E = self.E
        p = Params()
        lo = p(self.mark - LOOKBACK, "bigint")
        done = p(sorted(self.done), "bigint[]")
        extra = f" AND ({where(p)})" if where else ""
        sql = (f"SELECT {self.api.columns(E, 'e', None, ['datastream_id', 'thing_id', 'sample_id'])} "
               f"FROM ({E.branches[0]}) AS e WHERE e.sample_id > {lo} AND e.sample_id > {p(self.floor, 'bigint')} "
               f"AND NOT (e.sample_id = ANY ({done})){extra} ORDER BY e.sample_id, e.key LIMIT {BATCH}")
        rows = await (await conn.execute(sql, p.values)).fetchall()
        out = []
        for r in rows:
            key = (r["k_sample_id"], r["k_id"])
            if key in self.sent:
                continue
            self.sent.add(key)
            out.append((render.observation(E, r, self.api.base), r["k_datastream_id"], r["k_thing_id"]))
        if rows:
            self.mark = max(self.mark, rows[-1]["k_sample_id"])
            # every sample of this page is sent whole, but the last one when the page was cut short
            self.done |= {r["k_sample_id"] for r in rows[:-1]} | ({rows[-1]["k_sample_id"]} if len(rows) < BATCH
                                                                  else set())
            floor = self.mark - LOOKBACK
            self.sent = {k for k in self.sent if k[0] > floor}
            self.done = {d for d in self.done if d > floor}
        return out


def topics(obs, datastream_id, thing_id, version="v1.1"):
    """The MQTT topics of one new Observation (OGC 18-088 §14.2.1 entity-set topics)."""
    return [f"{version}/Observations", f"{version}/Datastreams({datastream_id})/Observations",
            f"{version}/Things({thing_id})/Datastreams/Observations"]
