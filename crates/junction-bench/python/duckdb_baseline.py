"""DuckDB baseline of the Compute benchmark (issue 4), run by `junction-bench compute-baseline`.

Contract: reads the CSV written by `junction bench-export-events` (one row per event a
profile owns: profile_id, timestamp_ms, type, event, revenue), writes it to Parquet next to it
(`FILE.parquet`, reused while newer than the CSV; not timed), loads it into an in-memory
DuckDB table (not timed), then runs each query `--runs` times over the Parquet file, over the
CSV file (parsed again by every run) and over the table, timing the query only (execute and
fetch of its one-row result). Two queries, each computing every profile's result in a
GROUP BY profile_id over all its events before counting:

- audience: members of `count(event = "Product Viewed", within = 30d) >= 3 and
  count(event = "Order Completed", within = 30d) == 0`, where an event is within 30d iff
  `timestamp_ms > now_ms - 30 * 86400000`; reports members and profiles (every profile_id).
- trait: `sum(properties.revenue, event = "Order Completed")` per profile (NULL when the
  profile has no such event with a numeric revenue); reports the profiles with a non-NULL sum
  and the total of those sums (a checksum).

DuckDB uses every core it sees (the thread count is reported). The CPU time other processes
used during each query's runs is reported too (machine busy time from /proc/stat minus this
process's): interference, which makes figures noisy. Prints one JSON object; exits
non-zero when the three settings disagree on a result (the checksum within 1e-9 relative).
"""

import argparse
import json
import os
import statistics
import sys
import time

import duckdb

DAY_MS = 86_400_000
WITHIN_MS = 30 * DAY_MS
COLUMNS = {
    "profile_id": "UBIGINT",
    "timestamp_ms": "BIGINT",
    "type": "VARCHAR",
    "event": "VARCHAR",
    "revenue": "DOUBLE",
}


def sql_string(text):
    return "'" + text.replace("'", "''") + "'"


def read_csv_sql(path):
    columns = "{" + ", ".join(f"{sql_string(k)}: {sql_string(v)}" for k, v in COLUMNS.items()) + "}"
    return (
        f"read_csv({sql_string(path)}, header = true, delim = ',', quote = '\"', "
        f"escape = '\"', columns = {columns})"
    )


def audience_sql(source, since_ms):
    return f"""
        WITH per_profile AS (
            SELECT profile_id,
                   count(*) FILTER (WHERE event = 'Product Viewed' AND timestamp_ms > {since_ms}) >= 3
                   AND count(*) FILTER (WHERE event = 'Order Completed' AND timestamp_ms > {since_ms}) = 0
                   AS member
            FROM {source}
            GROUP BY profile_id
        )
        SELECT count(*) FILTER (WHERE member) AS members, count(*) AS profiles FROM per_profile
    """


def trait_sql(source):
    return f"""
        WITH per_profile AS (
            SELECT profile_id, sum(revenue) FILTER (WHERE event = 'Order Completed') AS revenue
            FROM {source}
            GROUP BY profile_id
        )
        SELECT count(revenue) AS profiles_with_sum, sum(revenue) AS checksum FROM per_profile
    """


def machine_busy_seconds():
    """CPU seconds the whole machine spent busy (user, nice, system, irq, softirq, steal),
    as junction-bench's sysinfo reads them; None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7)) / ticks


def timed(con, sql, runs):
    """Seconds of each run, the one-row result, and the CPU seconds other processes used
    meanwhile (machine busy time minus this process's; None where unknown)."""
    seconds, result = [], None
    busy, own = machine_busy_seconds(), time.process_time()
    for _ in range(runs):
        started = time.perf_counter()
        row = con.execute(sql).fetchone()
        seconds.append(time.perf_counter() - started)
        if result is not None and not same_row(result, row):
            raise SystemExit(f"a run gave {row}, an earlier one {result}")
        result = row
    other = None
    if busy is not None:
        other = max(0.0, machine_busy_seconds() - busy - (time.process_time() - own))
    return seconds, result, other


def same_row(a, b):
    return all(
        x == y or (isinstance(x, float) and isinstance(y, float) and abs(x - y) <= 1e-9 * max(abs(x), abs(y)))
        for x, y in zip(a, b)
    )


def write_parquet(con, csv, parquet):
    if os.path.exists(parquet) and os.path.getmtime(parquet) > os.path.getmtime(csv):
        return False
    partial = parquet + ".partial"
    con.execute(f"COPY (SELECT * FROM {read_csv_sql(csv)}) TO {sql_string(partial)} (FORMAT parquet)")
    os.replace(partial, parquet)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True, help="CSV from `junction bench-export-events`")
    parser.add_argument("--now-ms", type=int, required=True, help="the window ends here (Unix ms)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each query per setting")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    csv = os.path.abspath(args.csv)
    parquet = os.path.splitext(csv)[0] + ".parquet"
    since_ms = args.now_ms - WITHIN_MS

    con = duckdb.connect(":memory:")
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    started = time.perf_counter()
    parquet_written = write_parquet(con, csv, parquet)
    parquet_seconds = time.perf_counter() - started
    started = time.perf_counter()
    con.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet({sql_string(parquet)})")
    table_seconds = time.perf_counter() - started
    rows = con.execute("SELECT count(*) FROM events").fetchone()[0]

    sources = {
        "parquet": f"read_parquet({sql_string(parquet)})",
        "csv": read_csv_sql(csv),
        "table": "events",
    }
    settings = {}
    for name, source in sources.items():
        runs, (members, profiles), other = timed(con, audience_sql(source, since_ms), args.runs)
        audience = {
            "median_s": statistics.median(runs),
            "runs_s": runs,
            "other_cpu_s": other,
            "result": {"members": members, "profiles": profiles},
        }
        runs, (with_sum, checksum), other = timed(con, trait_sql(source), args.runs)
        trait = {
            "median_s": statistics.median(runs),
            "runs_s": runs,
            "other_cpu_s": other,
            "result": {"profiles_with_sum": with_sum, "checksum": checksum},
        }
        settings[name] = {"audience": audience, "trait": trait}

    first = settings["parquet"]
    consistent = all(
        same_row(list(first[q]["result"].values()), list(s[q]["result"].values()))
        for s in settings.values()
        for q in ("audience", "trait")
    )
    print(
        json.dumps(
            {
                "duckdb_version": duckdb.__version__,
                "threads": threads,
                "rows": rows,
                "csv": csv,
                "csv_bytes": os.path.getsize(csv),
                "parquet": parquet,
                "parquet_bytes": os.path.getsize(parquet),
                "parquet_written": parquet_written,
                "parquet_seconds": parquet_seconds,
                "table_seconds": table_seconds,
                "now_ms": args.now_ms,
                "since_ms": since_ms,
                "runs": args.runs,
                "settings": settings,
                "consistent": consistent,
            }
        )
    )
    if not consistent:
        sys.exit("the settings disagree on a result (see the JSON above)")


if __name__ == "__main__":
    main()
