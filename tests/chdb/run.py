"""Runs Spoor's SQL on current ClickHouse, in process, through chdb-core.

Driven by tests/it/current_clickhouse.rs (one process for every query):
reads one JSON object from stdin,

    {"path": "<empty dir for the session's data>",
     "database": "spoor",
     "schema": ["CREATE TABLE ...", ...],
     "inserts": ["<TabSeparated rows of events>", ...],
     "queries": ["SELECT ...", ...]}

creates the database, applies the schema statements inside it, inserts
each TabSeparated block into `events` (one INSERT each, so the
materialized views fire per insert, as on a server), then runs every query
in order and writes one JSON object to stdout:

    {"version": "26.9.2.1", "timezone": "UTC",
     "results": [{"ok": <JSONCompact output, parsed; null if none>}
                 | {"error": "<ClickHouse's message>"}, ...]}

A failing query is reported and the next one runs; a failing schema
statement or insert stops the run (exit status 1, message on stderr).
Needs PYTHONPATH to hold chdb-core (`cargo xtask setup` installs it in
.spoor/tools/chdb) and TZ=UTC, like the test servers.
"""

import json
import sys

from chdb import session


def main():
    job = json.load(sys.stdin)
    s = session.Session(job["path"])
    database = job["database"]
    try:
        s.query(f"CREATE DATABASE {database}")
        s.query(f"USE {database}")
        for statement in job["schema"]:
            s.query(statement)
        for block in job["inserts"]:
            s.query("INSERT INTO events FORMAT TabSeparated\n" + block)
    except Exception as e:  # chdb raises its own error type
        print(f"chdb set-up failed: {e}", file=sys.stderr)
        sys.exit(1)
    about = json.loads(str(s.query("SELECT version(), timezone()", "JSONCompact")))
    version, timezone = about["data"][0]
    results = []
    for sql in job["queries"]:
        try:
            text = str(s.query(sql, "JSONCompact"))
            results.append({"ok": json.loads(text) if text.strip() else None})
        except Exception as e:
            results.append({"error": str(e)})
    s.close()
    json.dump({"version": version, "timezone": timezone, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
