"""The city's PostgreSQL: the schema, applied as numbered migrations by `openpole city init --db`.

Readings are partitioned by month on their time; a default partition takes times outside the
plausible range (a node's clock before 2020, or a day ahead of the loader's). The message index's
primary key is a node message's identity, (pole, node, boot, seq): a message that arrives twice,
in one batch re-sent past the stream's duplicate window or in another batch after a pole crash,
is stored once and counted as a duplicate. `series` lists each (pole, node, quantity) once (a
loader adds the ones it has not seen), and each loader keeps a row in `loaders` for `openpole city
status`. `rejected` keeps each batch refused for its content, with the reason; `dead_letters` each
batch the stream gave up on after MAX_DELIVER deliveries without an ack (tools/city/stream.py).
A migration is never edited once released: a change is a new one.
"""

from ..errors import UserError

MIGRATIONS = [
    (1, """
CREATE TABLE poles (
    pole text PRIMARY KEY,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_batch timestamptz
);
CREATE TABLE nodes (
    pole text NOT NULL,
    node text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pole, node)
);
CREATE TABLE messages (
    pole text NOT NULL,
    node text NOT NULL,
    boot bigint NOT NULL,
    seq bigint NOT NULL,
    batch_id bytea NOT NULL,
    readings integer NOT NULL,
    loaded timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pole, node, boot, seq)
);
CREATE TABLE readings (
    pole text NOT NULL,
    node text NOT NULL,
    quantity text NOT NULL,
    time timestamptz NOT NULL,
    value double precision NOT NULL,
    unit text,
    flags integer NOT NULL DEFAULT 0,
    time_quality smallint NOT NULL DEFAULT 0,
    boot bigint NOT NULL,
    seq bigint NOT NULL
) PARTITION BY RANGE (time);
CREATE INDEX readings_by_series ON readings (pole, node, quantity, time);
CREATE TABLE readings_other PARTITION OF readings DEFAULT;
CREATE TABLE rejected (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    subject text,
    reason text NOT NULL,
    payload bytea
);
CREATE TABLE counters (
    name text PRIMARY KEY,
    value bigint NOT NULL
);
"""),
    (2, """
-- Every series once: `city latest` looks up each one's newest reading through readings_by_series.
CREATE TABLE series (
    pole text NOT NULL,
    node text NOT NULL,
    quantity text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pole, node, quantity)
);
CREATE TABLE loaders (
    name text PRIMARY KEY,
    started timestamptz NOT NULL,
    seen timestamptz NOT NULL,
    batches bigint NOT NULL DEFAULT 0,
    received bigint NOT NULL DEFAULT 0,
    loaded bigint NOT NULL DEFAULT 0,
    rejected bigint NOT NULL DEFAULT 0,
    rate double precision NOT NULL DEFAULT 0,
    errors jsonb NOT NULL DEFAULT '{}'
);
-- One row per loader instead of shared counters that every loader's every group updated.
INSERT INTO loaders (name, started, seen, batches, received, loaded, rejected)
SELECT 'before schema 2', now(), now(),
       coalesce(max(value) FILTER (WHERE name = 'batches'), 0),
       coalesce(max(value) FILTER (WHERE name = 'records_received'), 0),
       coalesce(max(value) FILTER (WHERE name = 'records_unique'), 0),
       coalesce(max(value) FILTER (WHERE name = 'rejected'), 0)
FROM counters HAVING count(*) > 0;
DROP TABLE counters;
"""),
    (3, """
-- Batches the stream gave up on: delivered max_deliver times and never acknowledged (they crashed or
-- stalled every loader they reached). advisory: the stream's max-deliveries advisory id, so a loader
-- recording it again adds nothing; payload: the batch as the stream held it (NULL when already gone).
CREATE TABLE dead_letters (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    advisory text NOT NULL UNIQUE,
    stream_seq bigint,
    consumer text,
    deliveries integer,
    subject text,
    reason text NOT NULL,
    payload bytea
);
"""),
]


def connect(dsn):
    import psycopg

    try:
        return psycopg.connect(dsn, autocommit=False, connect_timeout=10)
    except psycopg.OperationalError as e:
        first = " ".join(str(e).split())[:200]
        raise UserError(f"--db: cannot connect to PostgreSQL: {first}") from None


def require_schema(conn):
    """A one-line UserError unless every migration has been applied to this database."""
    have = None
    if conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]:
        have = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    if have != MIGRATIONS[-1][0]:
        conn.close()
        raise UserError(f"--db: the database has {'no openpole schema' if have is None else f'schema version {have}'}"
                        f", this openpole needs version {MIGRATIONS[-1][0]}: run `openpole city init --db DSN`")


def migrate(dsn):
    """Apply the migrations not yet applied, each in its own transaction; returns the versions applied."""
    applied = []
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                     "applied timestamptz NOT NULL DEFAULT now())")
        conn.execute("SELECT pg_advisory_xact_lock(7061)")  # two inits at once: one applies, one waits
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        conn.commit()
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(7061)")
                if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,)).fetchone():
                    continue
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied
