"""The city's PostgreSQL: the schema, applied as numbered migrations by `openpole city init --db`.

Schema 4 keeps a row per node sample, not per reading: `samples` (thing, sample time, the pole's
receive time, time quality, the values by registry key, the keys flagged out of range, boot, seq),
partitioned by month on the sample time, a default partition taking times outside the plausible
range. Why, measured by bench/city.py (17 readings a node message, 21 registry keys): a row per
reading costs at least a 24-byte tuple header, a 4-byte line pointer and a 28-byte btree entry on
(series, time) before its own columns (~80 bytes); one sample row holds its 17 values in a real[]
of ~100 bytes beside ~80 bytes of header and columns, about 11 bytes a reading, and its two index
entries ~4 more. real (float4) holds every value a node sends: nodes send single precision,
rounded to the registry's resolution, and PostgreSQL prints a real in the shortest digits that
read back the same, so a value comes back as the pole sent it; a sample holding a value a real
does not give back exactly (a hand-made batch, a reading far out of range) keeps float8 values in
`vals8` instead. The unique key (thing, time, boot, seq) is the de-duplication: a node message sent
again, at any age, is stored once, and it serves a thing's time ranges.

`things` are nodes on poles (a node moved to another pole is a new thing), `series` a thing's
quantity (its registry key), both with integer ids for the API; `quantities` mirrors the registry
(sensor_specs/quantities.toml, synced at every `city init` and loader start). Hourly and daily
aggregates are folded in by a maintenance pass from `aggregate_queue`, the id blocks of the samples
committed since (tools/city/maintain.py): never by rescanning. `poles` holds the registry the city
imports (`city poles import`), `locations` each position a pole had. The views `readings`,
`nodes` and `observations` show the data as one row per reading. A migration is never edited once
released: a change is a new one.
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
    (4, [r"""
-- The registry's quantities, synced from sensor_specs (sync_quantities) right after this statement.
CREATE TABLE quantities (
    key smallint PRIMARY KEY,
    name text NOT NULL UNIQUE,
    unit text NOT NULL,
    kind text NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL
);
""", "sync_quantities", r"""
-- Things: a node on a pole. Integer ids, never reused, for the API.
CREATE TABLE things (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pole text NOT NULL,
    node text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    UNIQUE (pole, node)
);
CREATE TABLE thing_poles (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    thing_id integer NOT NULL REFERENCES things,
    pole text NOT NULL,
    since timestamptz NOT NULL
);
CREATE INDEX thing_poles_by_thing ON thing_poles (thing_id, since);
INSERT INTO things (pole, node, first_seen)
SELECT pole, node, min(first_seen) FROM (SELECT pole, node, first_seen FROM nodes
                                         UNION ALL SELECT DISTINCT pole, node, now() FROM readings) n
GROUP BY pole, node ORDER BY min(first_seen), pole, node;
INSERT INTO thing_poles (thing_id, pole, since) SELECT id, pole, first_seen FROM things ORDER BY id;

-- The poles' registry (`openpole city poles import`) and each position a pole has had.
ALTER TABLE poles ADD COLUMN lat double precision, ADD COLUMN lon double precision, ADD COLUMN address text,
    ADD COLUMN description text;
CREATE INDEX poles_position ON poles USING gist (point(lon, lat));
CREATE TABLE locations (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pole text NOT NULL REFERENCES poles,
    lat double precision NOT NULL,
    lon double precision NOT NULL,
    address text,
    description text,
    valid_from timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX locations_by_pole ON locations (pole, valid_from);

-- A row per node sample. id: blocks of 4096 from sample_blocks, one or more per loaded group, so
-- aggregate_queue names a group's samples by their blocks. An Observation (one reading) is
-- id * 256 + its registry key.
CREATE SEQUENCE sample_blocks;
CREATE TABLE samples (
    id bigint NOT NULL,
    time timestamptz NOT NULL,
    received timestamptz,
    boot bigint NOT NULL,
    seq bigint NOT NULL,
    thing_id integer NOT NULL,
    tq smallint NOT NULL,
    vals real[],
    vals8 double precision[],
    flagged smallint[]
) PARTITION BY RANGE (time);
CREATE UNIQUE INDEX samples_key ON samples (thing_id, time, boot, seq);
CREATE INDEX samples_id ON samples (id);
CREATE TABLE samples_other PARTITION OF samples DEFAULT;
CREATE TABLE aggregate_queue (
    block bigint PRIMARY KEY,
    queued timestamptz NOT NULL DEFAULT now()
);
-- Readings loaded before schema 4 that a sample cannot hold (a quantity the registry lacks, a unit
-- not the registry's, flags other than out-of-range, a second value of a quantity at one time in one
-- message): kept as they were. The loaders refuse such readings since schema 4.
CREATE TABLE readings_legacy (
    pole text NOT NULL,
    node text NOT NULL,
    quantity text NOT NULL,
    time timestamptz NOT NULL,
    value double precision NOT NULL,
    unit text,
    flags integer NOT NULL,
    time_quality smallint NOT NULL,
    boot bigint NOT NULL,
    seq bigint NOT NULL
);
CREATE INDEX readings_legacy_by_series ON readings_legacy (pole, node, quantity, time);

DO $$
DECLARE
    p record;
    m timestamptz;
BEGIN
    FOR p IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'readings'::regclass AND c.relname ~ '^readings_[0-9]{4}_[0-9]{2}$' LOOP
        m := make_timestamptz(substr(p.relname, 10, 4)::int, substr(p.relname, 15, 2)::int, 1, 0, 0, 0, 'UTC');
        EXECUTE format('CREATE TABLE %I PARTITION OF samples FOR VALUES FROM (%L) TO (%L)',
                       'samples_' || substr(p.relname, 10), m, (m AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC');
    END LOOP;
END $$;

CREATE FUNCTION pg_temp.at_keys(k smallint[], v double precision[]) RETURNS double precision[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    out double precision[] := array_fill(NULL::double precision, ARRAY[k[array_upper(k, 1)]]);
BEGIN
    FOR i IN 1 .. array_upper(k, 1) LOOP
        out[k[i]] := v[i];
    END LOOP;
    RETURN out;
END $$;
-- Each schema-3 reading, and whether a sample holds it as it is.
CREATE TEMP TABLE old ON COMMIT DROP AS
SELECT t.id AS thing_id, r.pole, r.node, r.quantity, r.time, r.value, r.unit, r.flags, r.time_quality, r.boot, r.seq,
       q.key, q.key IS NOT NULL AND r.unit IS NOT DISTINCT FROM q.unit AND r.flags IN (0, 1)
       AND row_number() OVER (PARTITION BY r.pole, r.node, r.boot, r.seq, r.time, r.quantity) = 1
       AND r.time_quality = first_value(r.time_quality) OVER (PARTITION BY r.pole, r.node, r.boot, r.seq, r.time)
       AS fits
FROM readings r JOIN things t USING (pole, node) LEFT JOIN quantities q ON q.name = r.quantity;
INSERT INTO readings_legacy SELECT pole, node, quantity, time, value, unit, flags, time_quality, boot, seq
FROM old WHERE NOT fits;
CREATE TEMP SEQUENCE migrated_ids START 4096;
-- A value goes into real when PostgreSQL prints it back as it was; a sample with one that does
-- not keeps them all as float8.
INSERT INTO samples (id, time, received, boot, seq, thing_id, tq, vals, vals8, flagged)
SELECT nextval('migrated_ids'), time, NULL, boot, seq, thing_id, tq,
       CASE WHEN exact THEN pg_temp.at_keys(keys, vals)::real[] END,
       CASE WHEN NOT exact THEN pg_temp.at_keys(keys, vals) END,
       flagged
FROM (SELECT thing_id, time, boot, seq, min(time_quality) AS tq, array_agg(key ORDER BY key) AS keys,
             array_agg(value ORDER BY key) AS vals,
             bool_and(CASE WHEN value = 0 THEN true
                           WHEN abs(value) BETWEEN 1e-37 AND 3.4e38 THEN value::real::text::float8 = value
                           ELSE false END) AS exact,
             array_agg(key ORDER BY key) FILTER (WHERE flags = 1) AS flagged
      FROM old WHERE fits GROUP BY thing_id, time, boot, seq) s
ORDER BY time, thing_id, boot, seq;
SELECT setval('sample_blocks', coalesce((SELECT max(id) / 4096 FROM samples), 0) + 1, false);
-- Each migrated block waits for the aggregates' fold, as a loaded group's do.
INSERT INTO aggregate_queue (block) SELECT DISTINCT id / 4096 FROM samples ORDER BY 1;

-- A thing's quantity (a Datastream): integer ids for the API.
CREATE TEMP TABLE old_series ON COMMIT DROP AS SELECT * FROM series;
DROP TABLE series;
CREATE TABLE series (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    thing_id integer NOT NULL REFERENCES things,
    key smallint NOT NULL REFERENCES quantities,
    unit text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    UNIQUE (thing_id, key)
);
INSERT INTO series (thing_id, key, unit, first_seen)
SELECT o.thing_id, o.key, q.unit, coalesce(min(s.first_seen), now())
FROM (SELECT DISTINCT thing_id, pole, node, quantity, key FROM old WHERE fits) o
JOIN quantities q USING (key) LEFT JOIN old_series s USING (pole, node, quantity)
GROUP BY o.thing_id, o.key, q.unit ORDER BY 4, 1, 2;

-- Per series and UTC hour, and UTC day: readings within the registry's range (flagged ones left out,
-- as the pole's own minute aggregates do). mean: the energy mean for decibel quantities.
CREATE TABLE hourly (
    series_id integer NOT NULL,
    hour timestamptz NOT NULL,
    count integer NOT NULL,
    mean double precision NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    first timestamptz NOT NULL,
    last timestamptz NOT NULL,
    PRIMARY KEY (series_id, hour)
);
CREATE TABLE daily (
    series_id integer NOT NULL,
    day timestamptz NOT NULL,
    count integer NOT NULL,
    mean double precision NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    first timestamptz NOT NULL,
    last timestamptz NOT NULL,
    PRIMARY KEY (series_id, day)
);

DROP TABLE readings;
DROP TABLE messages;
DROP TABLE nodes;
-- Schema 3's shapes, for the queries a city already has.
CREATE VIEW nodes AS SELECT pole, node, first_seen FROM things;
CREATE VIEW readings AS
SELECT t.pole, t.node, q.name AS quantity, s.time, coalesce(s.vals[q.key]::text::float8, s.vals8[q.key]) AS value,
       q.unit, CASE WHEN q.key = ANY (s.flagged) THEN 1 ELSE 0 END AS flags, s.tq AS time_quality, s.boot, s.seq
FROM samples s JOIN things t ON t.id = s.thing_id
JOIN quantities q ON coalesce(s.vals[q.key]::float8, s.vals8[q.key]) IS NOT NULL
UNION ALL
SELECT pole, node, quantity, time, value, unit, flags, time_quality, boot, seq FROM readings_legacy;
-- One row per reading, as the SensorThings API serves it: id = sample id * 256 + key.
CREATE VIEW observations AS
SELECT s.id * 256 + se.key AS id, s.id AS sample_id, se.key, se.id AS series_id, s.thing_id, s.time, s.received,
       coalesce(s.vals[se.key]::text::float8, s.vals8[se.key]) AS result,
       CASE WHEN se.key = ANY (s.flagged) THEN 1 ELSE 0 END AS flags, s.tq, s.boot, s.seq
FROM series se JOIN samples s ON s.thing_id = se.thing_id
WHERE coalesce(s.vals[se.key]::float8, s.vals8[se.key]) IS NOT NULL;
"""]),
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
    conn.rollback()  # idle again: the caller's transaction() is a transaction, not a savepoint


def sync_quantities(conn):
    """The registry's quantities (sensor_specs/quantities.toml) into `quantities`: new keys added,
    the others brought up to date (keys are stable; names are never reused)."""
    from openpole.spec.registry import REGISTRY

    rows = [(q.key, q.name, q.unit, q.kind, float(q.min), float(q.max))
            for q in sorted(REGISTRY.by_key.values(), key=lambda q: q.key)]
    with conn.cursor() as cur:
        have = set(cur.execute("SELECT key, name, unit, kind, min, max FROM quantities").fetchall())
        rows = [r for r in rows if r not in have]  # usually none: no row locked (series rows share-lock them)
        if not rows:
            return
        cur.executemany("INSERT INTO quantities (key, name, unit, kind, min, max) VALUES (%s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (key) DO UPDATE SET name = excluded.name, unit = excluded.unit, kind = excluded.kind, "
                        "min = excluded.min, max = excluded.max WHERE (quantities.name, quantities.unit, quantities.kind, "
                        "quantities.min, quantities.max) IS DISTINCT FROM (excluded.name, excluded.unit, excluded.kind, "
                        "excluded.min, excluded.max)", rows)


STEPS = {"sync_quantities": sync_quantities}


def migrate(dsn):
    """Apply the migrations not yet applied, each in its own transaction, then sync the registry's
    quantities; returns the versions applied."""
    applied = []
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                     "applied timestamptz NOT NULL DEFAULT now())")
        conn.execute("SELECT pg_advisory_xact_lock(7061)")  # two inits at once: one applies, one waits
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        conn.commit()
        for version, steps in MIGRATIONS:
            if version in done:
                continue
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(7061)")
                if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,)).fetchone():
                    continue
                for step in [steps] if isinstance(steps, str) else steps:
                    if step in STEPS:
                        STEPS[step](conn)
                    else:
                        conn.execute(step)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
        with conn.transaction():
            sync_quantities(conn)
    return applied


READER = "openpole_reader"
READER_TIMEOUT = "30s"  # a safety net: the API sets its own statement_timeout per query


def reader_sql(schema, database):
    """The statements that make (or bring up to date) the API's read-only role."""
    return [f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER}') THEN "
            f"CREATE ROLE {READER} LOGIN; END IF; END $$",
            f'GRANT CONNECT ON DATABASE "{database}" TO {READER}',
            f'GRANT USAGE ON SCHEMA "{schema}" TO {READER}',
            f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO {READER}',
            f'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" GRANT SELECT ON TABLES TO {READER}',
            f"ALTER ROLE {READER} SET statement_timeout = '{READER_TIMEOUT}'"]


def ensure_reader(dsn):
    """Make the read-only role openpole_reader (SELECT on the schema's tables and views, now and
    to come) -> ("made" | "updated", None), or ("sql", the SQL) when this login may not make roles."""
    import psycopg

    with connect(dsn) as conn:
        schema, database = conn.execute("SELECT current_schema(), current_database()").fetchone()
        sql = reader_sql(schema, database)
        exists, may = conn.execute(f"SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER}'), "
                                   "(SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user)"
                                   ).fetchone()
        if not may:
            return "sql", ";\n".join(sql) + ";"
        try:
            with conn.transaction():
                for statement in sql:
                    conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:  # e.g. the tables belong to another role
            return "sql", ";\n".join(sql) + ";"
    return ("updated" if exists else "made"), None
