"""`atelier keys`: API keys for the studio's HTTP API, and the secret that signs its webhooks.

Once a key exists, every API request needs one (`Authorization: Bearer <key>`). Keys are stored hashed; the
key itself is shown once, when it is created. A user key sees and stops only its own jobs and outputs and
uses the shared models; an admin key (`--admin`) may also replace and delete models and change studio options.
`atelier keys webhook-secret` prints the Standard Webhooks secret receivers verify signatures with.
`atelier keys install NAME --from-env VAR` stores a key kept in a deployment's secrets (Kubernetes, Compose), so
the API can listen beyond loopback without anyone running `create` by hand; running it again changes nothing.
"""

from __future__ import annotations

import argparse
import json

from atelier.cli.serve import add_studio_arguments, studio_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="create, list and revoke API keys", description=__doc__)
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True
    create = sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("name", help="who or what the key is for, e.g. 'marketing-laptop'")
    create.add_argument(
        "--admin", action="store_true", help="an admin key (models, options, everyone's jobs)"
    )
    install = sub.add_parser(
        "install", help="store a key from an environment variable (deployments' secrets); idempotent"
    )
    install.add_argument("name", help="who or what the key is for, e.g. 'ops'")
    # From the environment, not an argument: arguments are visible to every user of the machine (ps).
    install.add_argument(
        "--from-env", required=True, metavar="VAR", help="environment variable holding the key"
    )
    install.add_argument("--admin", action="store_true", help="an admin key")
    listing = sub.add_parser("list", help="list keys (names and hints, never the keys)")
    listing.add_argument("--json", action="store_true")
    revoke = sub.add_parser("revoke", help="stop a key from working")
    revoke.add_argument("name")
    secret = sub.add_parser("webhook-secret", help="print the secret that signs webhooks (Standard Webhooks)")
    for action in (create, install, listing, revoke, secret):
        add_studio_arguments(action)
        action.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atelier.service.database import open_database
    from atelier.service.job_store import SqlJobStore
    from atelier.service.registry import StudioSettings
    from atelier.service.security import ApiKeyStore
    from atelier.service.webhooks import WebhookDeliveries

    config = studio_config(args)
    database = open_database(config.database_url)
    try:
        keys = ApiKeyStore(database)
        if args.keys_command == "create":
            role = "admin" if args.admin else "user"
            _key, secret = keys.create(args.name, role=role)
            print(secret)
            print(
                f"{role} API key {args.name!r} created; it is shown only now. Send it as "
                "'Authorization: Bearer <key>'."
            )
        elif args.keys_command == "install":
            import os

            from atelier.errors import AtelierError

            role = "admin" if args.admin else "user"
            secret = os.environ.get(args.from_env, "")
            if not secret:
                raise AtelierError(
                    f"the environment variable {args.from_env} is empty or not set", field="key"
                )
            added = keys.install(args.name, secret, role=role)
            print(f"{role} API key {args.name!r} {'installed' if added else 'was already installed'}")
        elif args.keys_command == "webhook-secret":
            print(WebhookDeliveries(SqlJobStore(database), StudioSettings(database)).secret())
        elif args.keys_command == "revoke":
            keys.revoke(args.name)
            print(f"API key {args.name!r} revoked")
        else:
            rows = [key.to_dict() for key in keys.list()]
            if args.json:
                print(json.dumps(rows))
            for row in [] if args.json else rows:
                state = "active" if row["revoked_at"] is None else f"revoked {row['revoked_at']}"
                print(
                    f"{row['name']:<30} {row['role']:<6} {row['hint']}...  created {row['created_at']}  {state}"
                )
    finally:
        database.dispose()
    return 0
