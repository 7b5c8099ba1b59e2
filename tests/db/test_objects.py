"""runner.db.objects on a real PostgreSQL: what a step created, against the record before it."""

from __future__ import annotations

import psycopg
from support import libpq

from runner.db import objects

# One of every kind recovery tracks, in its own schema and in public.
_BEFORE = """
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('ok', 'sad');
CREATE DOMAIN app.pos AS int CHECK (VALUE > 0);
CREATE TABLE app.t (id serial PRIMARY KEY, name text NOT NULL UNIQUE, m app.mood);
CREATE INDEX t_name_ix ON app.t (lower(name));
CREATE VIEW app.v AS SELECT id FROM app.t;
CREATE FUNCTION app.f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER t_trg BEFORE INSERT ON app.t FOR EACH ROW EXECUTE FUNCTION app.f();
CREATE TABLE public.p (id int PRIMARY KEY, t_id int REFERENCES app.t (id));
CREATE SEQUENCE public.s;
"""

_AFTER = """
CREATE TABLE app.n (id int PRIMARY KEY);
CREATE INDEX n_ix ON app.n (id);
ALTER TABLE app.t ADD COLUMN extra int NOT NULL DEFAULT 0;
CREATE INDEX t_extra_ix ON app.t (extra);
ALTER TABLE public.p ADD CONSTRAINT p_pos CHECK (id > 0);
ALTER TYPE app.mood ADD VALUE 'glad';
CREATE TYPE public.kind AS ENUM ('a', 'b');
CREATE VIEW public.w AS SELECT 1 AS one;
CREATE FUNCTION public.g() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE TRIGGER p_trg BEFORE INSERT ON public.p FOR EACH ROW EXECUTE FUNCTION app.f();
CREATE SEQUENCE app.s2;
CREATE SCHEMA other;
"""


def test_created_since_lists_exactly_what_came_after_the_record(db) -> None:
    with psycopg.connect(libpq(db), autocommit=True) as conn:
        conn.execute(_BEFORE)
        before = objects.existing(conn)
        assert objects.created_since(conn, before) == []
        conn.execute(_AFTER)
        found = {(o.kind, o.schema, o.name, o.table) for o in objects.created_since(conn, before)}
    assert found == {
        ("table", "app", "n", None),  # its primary key and index go with it
        ("column", "app", "extra", "t"),
        ("index", "app", "t_extra_ix", "t"),
        ("constraint", "public", "p_pos", "p"),
        ("enum_value", "app", "'glad'", "mood"),
        ("type", "public", "kind", None),  # its values go with it
        ("view", "public", "w", None),
        ("function", "public", "g", None),
        ("trigger", "public", "p_trg", "p"),
        ("sequence", "app", "s2", None),
        ("schema", None, "other", None),
    }


def test_the_record_survives_its_json_round_trip(db) -> None:
    with psycopg.connect(libpq(db), autocommit=True) as conn:
        conn.execute(_BEFORE)
        before = objects.Existing.from_dict(objects.existing(conn).to_dict())
        conn.execute("CREATE INDEX late_ix ON public.p (t_id)")
        found = [(o.kind, o.name) for o in objects.created_since(conn, before)]
    assert found == [("index", "late_ix")]
