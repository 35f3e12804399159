"""Keep the embedded broker's file bounded.

With no Redis, Celery runs on kombu's SQLAlchemy transport over a SQLite file, which marks a
consumed message invisible and never deletes it: about 1.4 KB a message, 2.5 GB a day at a
thousand servers checked every 5 s. `purge_consumed` deletes them (beat runs it every minute);
SQLite reuses the freed pages, so the file stops growing at the size of a minute's messages.
"""

from __future__ import annotations

import sqlite3

PREFIX = "sqla+sqlite:///"


def sqlite_path(broker_url: str) -> str | None:
    """The SQLite file of an embedded broker URL (None for any other broker)."""
    if not broker_url.startswith(PREFIX):
        return None
    return broker_url[len(PREFIX) :].split("?", 1)[0]


def purge_consumed(broker_url: str) -> int:
    """Delete the messages workers have taken; returns how many (0 for other brokers)."""
    path = sqlite_path(broker_url)
    if path is None:
        return 0
    with sqlite3.connect(path, timeout=30) as db:
        try:
            cursor = db.execute("DELETE FROM kombu_message WHERE visible = 0")
        except sqlite3.OperationalError as exc:  # no table yet: nothing was ever sent
            if "no such table" in str(exc):
                return 0
            raise
        return cursor.rowcount
