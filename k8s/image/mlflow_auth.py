"""Prepare MLflow's basic-auth app before the server starts (the MLflow Deployment's init container).

Writes the auth app's config file (MLFLOW_AUTH_CONFIG_PATH: every user reads, nobody writes what it did
not create or was not granted, users kept in MLFLOW_AUTH_DATABASE_URI) and makes the three users
exist with the passwords of their Secrets, creating or updating each (so rotating a Secret and
restarting the Deployment rotates the password):

    admin   MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD    manages users and permissions
    writer  MLFLOW_WRITER_USERNAME / MLFLOW_WRITER_PASSWORD            the RayJobs: runs, models, aliases
    reader  MLFLOW_READER_USERNAME / MLFLOW_READER_PASSWORD            the RayService: reads the registry

Credentials come from the environment only, never from arguments. The database password, when the
URI has none, comes from PGPASSWORD (libpq reads it). Run again with the same values, it changes
nothing.
"""

from __future__ import annotations

import configparser
import os
import sys
from pathlib import Path

USERS = (("ADMIN", "MLFLOW_AUTH_ADMIN", True), ("WRITER", "MLFLOW_WRITER", False), ("READER", "MLFLOW_READER", False))


def write_config(path: Path, database_uri: str, default_permission: str = "READ") -> None:
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": default_permission,
        "database_uri": database_uri,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        config.write(f)


def ensure_users(database_uri: str, env: dict[str, str]) -> list[str]:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri)
    done = []
    for _, prefix, is_admin in USERS:
        name, password = env.get(f"{prefix}_USERNAME"), env.get(f"{prefix}_PASSWORD")
        if not name or not password:
            raise SystemExit(f"{prefix}_USERNAME and {prefix}_PASSWORD must both be set")
        if store.has_user(name):
            store.update_user(name, password=password, is_admin=is_admin)
            done.append(f"updated {name}")
        else:
            store.create_user(name, password, is_admin=is_admin)
            done.append(f"created {name}")
    return done


def main() -> int:
    env = dict(os.environ)
    database_uri = env["MLFLOW_AUTH_DATABASE_URI"]
    write_config(Path(env["MLFLOW_AUTH_CONFIG_PATH"]), database_uri)
    for line in ensure_users(database_uri, env):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
