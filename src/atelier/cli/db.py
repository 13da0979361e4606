"""`atelier db`: the studio database. `migrate-to URL` moves a studio off its embedded SQLite file.

    atelier db migrate-to postgresql://atelier:secret@db.internal:5432/atelier --data ./atelier-data

Every table (jobs and their webhook deliveries, the model registry, options, API keys, the processed-objects
ledger, the worker board) is copied into the target, which must be an empty database: the studio's schema is
created there first. Stop `serve` and the workers before; afterwards start them with `--db URL` (or
`ATELIER_DATABASE_URL`). The source is left as it was, apart from being upgraded to this version's schema.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("db", help="the studio database: move it to PostgreSQL", description=__doc__)
    sub = p.add_subparsers(dest="db_command", metavar="ACTION")
    sub.required = True
    migrate = sub.add_parser(
        "migrate-to",
        help="copy every table into an empty database (SQLite to PostgreSQL)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.add_argument("url", help="the target database, e.g. postgresql://user:password@host:5432/atelier")
    # Where the source is: the data folder's atelier.db unless --db names another (as for serve).
    migrate.add_argument(
        "--data", type=Path, default=None, help="data folder (default: $ATELIER_DATA_DIR or ./atelier-data)"
    )
    migrate.add_argument(
        "--db", default=None, help="the source database URL (default: SQLite in the data folder)"
    )
    migrate.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from atelier.service.config import StudioConfig
    from atelier.service.db_copy import copy_database

    source = StudioConfig.for_data_dir(args.data, database_url=args.db).database_url
    shown = make_url(args.url).render_as_string(hide_password=True)
    print(f"copying {make_url(source).render_as_string(hide_password=True)} to {shown}", flush=True)
    counts = copy_database(source, args.url, progress=lambda table, rows: print(f"  {table}: {rows} rows"))
    print(
        f"done: {sum(counts.values())} rows in {len(counts)} tables. Start the studio with --db {shown} "
        "(or ATELIER_DATABASE_URL)."
    )
    return 0
