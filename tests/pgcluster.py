"""A private PostgreSQL server for the city tests (openpole.city.services, which `openpole sim demo
--city` starts too)."""

from openpole.city.services import PgServer, pg_bin  # noqa: F401
