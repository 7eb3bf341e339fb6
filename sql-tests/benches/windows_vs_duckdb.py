"""Window queries on the same rows in Tidebase, DuckDB and PostgreSQL 15,
side by side in one run.

    python3 sql-tests/benches/windows_vs_duckdb.py [--rows N] [--no-postgres]

(with psycopg and duckdb installed: `pip install psycopg[binary] duckdb`)

Rows are (user_id among 10,000 users, ts, amount). Tidebase reads them from a
table whose row key is (user_id, ts), loaded with COPY and compacted, through
the wire; DuckDB holds them in memory; PostgreSQL (a throwaway server started
with initdb / pg_ctl on 127.0.0.1, as the postgres user when run as root) in
a table. Each query returns one aggregated row, so the wire is not what is
measured. Each query runs three times per system; the best time is printed,
with Tidebase's ratio to DuckDB and to PostgreSQL, and Tidebase's peak
resident memory.

TIDEBASE_BIN picks the server binary (default target/release/tidebase, built
if missing).
"""

import argparse
import io
import os
import shutil
import subprocess
import tempfile
import time

from ports import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USERS = 10_000

QUERIES = [
    ("moving average over 3 rows",
     "SELECT sum(x) FROM (SELECT avg(amount) OVER (PARTITION BY user_id ORDER BY ts "
     "ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS x FROM tx) s"),
    ("cumulative sum",
     "SELECT sum(x) FROM (SELECT sum(amount) OVER (PARTITION BY user_id ORDER BY ts "
     "ROWS UNBOUNDED PRECEDING) AS x FROM tx) s"),
    ("lag",
     "SELECT sum(x) FROM (SELECT lag(amount, 1) OVER (PARTITION BY user_id ORDER BY ts) AS x FROM tx) s"),
    ("rank (needs a sort)",
     "SELECT sum(x) FROM (SELECT rank() OVER (PARTITION BY user_id ORDER BY amount) AS x FROM tx) s"),
]


def rows_text(n):
    buf = io.StringIO()
    for i in range(n):
        buf.write(f"{i % USERS}\t{i // USERS}\t{(i * 7919) % 100_000 / 100.0}\n")
    return buf.getvalue()


def best(run, reps=3):
    times, value = [], None
    for _ in range(reps):
        started = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - started)
    return min(times), value


def peak_rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def tidebase(binary, data, tmp):
    import psycopg
    port = free_port()
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--kafka-listen", "",
                             "--data-dir", os.path.join(tmp, "tidebase"), "--log-level", "warn"],
                            stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                             autocommit=True) as c:
            c.execute("CREATE TABLE tx (user_id INT, ts BIGINT, amount DOUBLE PRECISION, "
                      "PRIMARY KEY (user_id, ts))")
            started = time.perf_counter()
            with c.cursor().copy("COPY tx FROM STDIN") as cp:
                cp.write(data)
            load = time.perf_counter() - started
            c.execute("ALTER TABLE tx FLUSH")
            c.execute("ALTER TABLE tx COMPACT")
            results = [best(lambda q=q: c.execute(q).fetchone()[0]) for _, q in QUERIES]
        return load, results, peak_rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def duckdb_run(n):
    import duckdb
    con = duckdb.connect()
    con.execute(f"CREATE TABLE tx AS SELECT (i % {USERS})::INT AS user_id, (i // {USERS})::BIGINT AS ts, "
                f"((i * 7919) % 100000) / 100.0 AS amount FROM range({n}) t(i)")
    return [best(lambda q=q: con.execute(q).fetchone()[0]) for _, q in QUERIES]


def postgres_run(data, tmp):
    import psycopg
    as_root = os.geteuid() == 0
    pgdir = os.path.join(tmp, "pg")
    os.makedirs(pgdir)
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(pgdir, "postgres")
    subprocess.run(prefix + ["initdb", "-A", "trust", "-U", "postgres", "-D", os.path.join(pgdir, "data")],
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {pgdir} -c shared_buffers=1GB -c work_mem=256MB"
    subprocess.run(prefix + ["pg_ctl", "-w", "-D", os.path.join(pgdir, "data"), "-o", opts,
                             "-l", os.path.join(pgdir, "log"), "start"], check=True, stdout=subprocess.DEVNULL)
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute("CREATE TABLE tx (user_id INT, ts BIGINT, amount DOUBLE PRECISION, PRIMARY KEY (user_id, ts))")
            with c.cursor().copy("COPY tx FROM STDIN") as cp:
                cp.write(data)
            c.execute("VACUUM ANALYZE tx")
            return [best(lambda q=q: c.execute(q).fetchone()[0]) for _, q in QUERIES]
    finally:
        subprocess.run(prefix + ["pg_ctl", "-m", "immediate", "-D", os.path.join(pgdir, "data"), "stop"],
                       stdout=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    binary = os.environ.get("TIDEBASE_BIN", os.path.join(ROOT, "target", "release", "tidebase"))
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release", "-p", "tidebase-server", "--bin", "tidebase"],
                       cwd=ROOT, check=True)
    data = rows_text(args.rows)
    print(f"Window queries, {args.rows:,} rows (user_id among {USERS:,} users, ts, amount); best of 3")
    with tempfile.TemporaryDirectory() as tmp:
        if os.geteuid() == 0:
            os.chmod(tmp, 0o755)
        load, tb, rss = tidebase(binary, data, tmp)
        print(f"Tidebase COPY: {args.rows / load:,.0f} rows/s; server peak RSS {rss:,.0f} MB")
        dd = duckdb_run(args.rows)
        pg = None if args.no_postgres else postgres_run(data, tmp)
    print(f"{'query':<28} {'Tidebase':>9} {'DuckDB':>9} {'PG 15':>9} {'TB/DuckDB':>10} {'TB/PG':>7}")
    for i, (name, _) in enumerate(QUERIES):
        t, d = tb[i][0], dd[i][0]
        p = pg[i][0] if pg else float("nan")
        same = pg is None or abs(float(tb[i][1]) - float(pg[i][1])) <= 1e-6 * max(1.0, abs(float(pg[i][1])))
        agree = "" if same else f"  (answers differ: {tb[i][1]} vs {pg[i][1]})"
        print(f"{name:<28} {t:>8.3f}s {d:>8.3f}s {p:>8.3f}s {t / d:>9.2f}x {t / p:>6.2f}x{agree}")


if __name__ == "__main__":
    main()
