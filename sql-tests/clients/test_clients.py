"""Real PostgreSQL clients against a real tidebase server.

Run by .ci/run after `cargo build`: psycopg 3, asyncpg, SQLAlchemy + pandas
and psql each create a table, insert rows with parameters, read them back
and list tables, and the lecture's customer example returns the lecture's
numbers. The server binary is started on a free port with a fresh data
directory and stopped at the end.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from datetime import date
from decimal import Decimal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("TIDEBASE_BIN", os.path.join(ROOT, "target", "debug", "tidebase"))

CUSTOMERS = [
    ("Alice", date(2016, 5, 1), 50),
    ("Alice", date(2016, 5, 3), 45),
    ("Alice", date(2016, 5, 4), 55),
    ("Bob", date(2016, 5, 1), 25),
    ("Bob", date(2016, 5, 4), 29),
    ("Bob", date(2016, 5, 6), 27),
]

WINDOW_SQL = """
SELECT name, date,
  avg(amount) OVER (PARTITION BY name ORDER BY date ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) AS moving_avg,
  sum(amount) OVER (PARTITION BY name ORDER BY date ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cumulative,
  lag(amount, 1) OVER (PARTITION BY name ORDER BY date) AS previous,
  rank() OVER (PARTITION BY name ORDER BY date) AS rank
FROM {table} ORDER BY name, date
"""

EXPECTED = [
    ("Alice", 47.5, 50, None, 1),
    ("Alice", 50.0, 95, 50, 2),
    ("Alice", 50.0, 150, 45, 3),
    ("Bob", 27.0, 25, None, 1),
    ("Bob", 27.0, 54, 25, 2),
    ("Bob", 28.0, 81, 29, 3),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tidebase-clients-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [BINARY, "--listen", f"127.0.0.1:{self.port}", "--data-dir", os.path.join(self.dir, "data"),
             "--kafka-listen", "", "--log-level", "warn"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("tidebase exited during startup")
                time.sleep(0.05)
        raise RuntimeError("tidebase did not start listening")

    def stop(self):
        self.proc.terminate()
        code = self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
        return code

    def dsn(self):
        return f"host=127.0.0.1 port={self.port} user=tidebase dbname=tidebase"


def _int_or_none(v):
    # pandas reads a NULL in an integer column as NaN
    if v is None or (isinstance(v, float) and v != v):
        return None
    return int(v)


def check_window_rows(case, rows):
    got = [(r[0], float(r[2]), int(r[3]), _int_or_none(r[4]), int(r[5])) for r in rows]
    case.assertEqual(got, EXPECTED)


class Clients(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        # SIGTERM is a graceful shutdown: the process exits 0.
        assert cls.server.stop() == 0

    def test_psycopg3(self):
        import psycopg

        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE pg3_customers (name TEXT, date DATE, amount INT, PRIMARY KEY (name, date))")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO pg3_customers VALUES (%s, %s, %s)", CUSTOMERS)
                cur.execute("SELECT name, amount FROM pg3_customers WHERE amount > %s ORDER BY amount", (40,))
                self.assertEqual(cur.fetchall(), [("Alice", 45), ("Alice", 50), ("Alice", 55)])
                cur.execute(WINDOW_SQL.format(table="pg3_customers"))
                check_window_rows(self, cur.fetchall())
                # binary results too
                cur = conn.cursor(binary=True)
                cur.execute("SELECT count(*), max(date) FROM pg3_customers WHERE name = %s", ("Bob",))
                self.assertEqual(cur.fetchone(), (3, date(2016, 5, 6)))
                # avg over an int column is numeric, in binary and in text
                for binary in (True, False):
                    cur = conn.cursor(binary=binary)
                    cur.execute("SELECT avg(amount), stddev(amount) FROM pg3_customers WHERE name = %s", ("Bob",))
                    row = cur.fetchone()
                    self.assertTrue(all(isinstance(v, Decimal) for v in row), row)
                    self.assertEqual([str(v) for v in row], ["27.0000000000000000", "2.0000000000000000"])
        # a transaction block as psycopg opens it by default
        with psycopg.connect(self.server.dsn()) as conn:
            row = conn.execute("SELECT count(*) FROM pg3_customers").fetchone()
            self.assertEqual(row[0], 6)
            conn.commit()

    def test_asyncpg(self):
        import asyncpg

        async def run():
            conn = await asyncpg.connect(host="127.0.0.1", port=self.server.port, user="tidebase", database="tidebase")
            await conn.execute("CREATE TABLE apg_customers (name TEXT, date DATE, amount INT, PRIMARY KEY (name, date))")
            await conn.executemany("INSERT INTO apg_customers VALUES ($1, $2, $3)", CUSTOMERS)
            rows = await conn.fetch(WINDOW_SQL.format(table="apg_customers"))
            check_window_rows(self, [tuple(r) for r in rows])
            n = await conn.fetchval("SELECT count(*) FROM apg_customers WHERE name = $1", "Alice")
            self.assertEqual(n, 3)
            await conn.close()

        asyncio.run(run())

    def test_sqlalchemy_and_pandas(self):
        import pandas as pd
        import sqlalchemy as sa

        engine = sa.create_engine(f"postgresql+psycopg://tidebase@127.0.0.1:{self.server.port}/tidebase")
        with engine.connect() as conn:
            conn.execute(sa.text("CREATE TABLE sa_customers (name TEXT, date DATE, amount INT, PRIMARY KEY (name, date))"))
            conn.execute(
                sa.text("INSERT INTO sa_customers VALUES (:name, :date, :amount)"),
                [dict(name=n, date=d, amount=a) for n, d, a in CUSTOMERS],
            )
            conn.commit()
        inspector = sa.inspect(engine)
        self.assertIn("sa_customers", inspector.get_table_names())
        self.assertTrue(inspector.has_table("sa_customers"))
        self.assertFalse(inspector.has_table("no_such_table"))
        columns = {c["name"]: str(c["type"]) for c in inspector.get_columns("sa_customers")}
        self.assertEqual(columns, {"name": "TEXT", "date": "DATE", "amount": "INTEGER"})
        pk = inspector.get_pk_constraint("sa_customers")
        self.assertEqual(pk["constrained_columns"], ["name", "date"])
        frame = pd.read_sql(WINDOW_SQL.format(table="sa_customers"), engine)
        check_window_rows(self, list(frame.itertuples(index=False, name=None)))

    def test_psql_describe(self):
        psql = shutil.which("psql")
        if psql is None:
            self.fail("psql is not installed")
        env = dict(os.environ, PGCONNECT_TIMEOUT="10")
        dsn = self.server.dsn()
        subprocess.run([psql, dsn, "-c", "CREATE TABLE psql_t (id INT PRIMARY KEY, label TEXT, extra.note TEXT)"],
                       check=True, env=env, capture_output=True)
        out = subprocess.run([psql, dsn, "-c", r"\d psql_t"], check=True, env=env, capture_output=True,
                             text=True, timeout=60).stdout
        self.assertIn('Table "public.psql_t"', out)
        self.assertRegex(out, r"id\s+\|\s+integer")
        self.assertRegex(out, r"label\s+\|\s+text")
        self.assertIn('"psql_t_pkey" PRIMARY KEY, btree (id)', out)
        # \d+ shows each column's family as its description.
        done = subprocess.run([psql, dsn, "-c", r"\d+ psql_t"], env=env, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(done.stderr, "")
        self.assertRegex(done.stdout, r"id\s+\|.*\|\s+row key")
        self.assertRegex(done.stdout, r"label\s+\|.*\|\s+family 0")
        self.assertRegex(done.stdout, r"note\s+\|.*\|\s+family extra")
        out = subprocess.run([psql, dsn, "-c", r"\dt"], check=True, env=env, capture_output=True,
                             text=True, timeout=60).stdout
        self.assertIn("psql_t", out)
        out = subprocess.run([psql, dsn, "-At", "-c", "SELECT avg(amount) OVER (ORDER BY x ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) "
                              "FROM (VALUES (1, 50), (2, 45), (3, 55)) AS v(x, amount) ORDER BY x"],
                             check=True, env=env, capture_output=True, text=True, timeout=60).stdout
        self.assertEqual(out.split(), ["47.5000000000000000", "50.0000000000000000", "50.0000000000000000"])


if __name__ == "__main__":
    if "TIDEBASE_BIN" not in os.environ:
        # `cargo test` does not build another crate's binary; build (or confirm) it here.
        subprocess.run(["cargo", "build", "--quiet", "-p", "tidebase-server", "--bin", "tidebase"],
                       cwd=ROOT, check=True)
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} not found")
    unittest.main(verbosity=2)
