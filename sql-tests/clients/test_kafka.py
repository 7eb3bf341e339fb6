"""Stock Kafka clients against a real tidebase server's Kafka listener.

kcat (librdkafka 2.0), confluent-kafka (librdkafka 2.16) and kafka-python
produce and consume; two consumers in one group split the partitions,
rebalance when one leaves, commit offsets and resume from them after the
server restarts; what they did is visible in SQL. Run by .ci/run.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_clients import BINARY, ROOT, free_port  # noqa: E402


class Server:
    """A tidebase process with a PostgreSQL and a Kafka port; restartable on the same data."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tidebase-kafka-")
        self.port = free_port()
        self.kafka_port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [BINARY, "--listen", f"127.0.0.1:{self.port}", "--kafka-listen", f"127.0.0.1:{self.kafka_port}",
             "--data-dir", os.path.join(self.dir, "data"), "--log-level", "warn"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.kafka_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(timeout=30)

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=30)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.kafka_port}"

    def sql(self, query):
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=tidebase dbname=tidebase",
                             autocommit=True) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else None


def drain(consumer, want, timeout=30):
    """Polls until `want` messages arrived (or the timeout); returns them."""
    got = []
    deadline = time.time() + timeout
    while len(got) < want and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error():
            raise AssertionError(m.error())
        got.append(m)
    return got


class KafkaClients(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def test_kcat_produces_and_consumes(self):
        kcat = shutil.which("kcat") or shutil.which("kafkacat")
        if kcat is None:
            self.fail("kcat is not installed")
        self.server.sql("CREATE TOPIC kc WITH (PARTITIONS = 1)")
        lines = "".join(f"k{i}:value {i}\n" for i in range(100))
        subprocess.run([kcat, "-P", "-b", self.server.bootstrap, "-t", "kc", "-K:", "-p", "0"],
                       input=lines, text=True, check=True, timeout=60)
        out = subprocess.run([kcat, "-C", "-b", self.server.bootstrap, "-t", "kc", "-o", "beginning", "-e",
                              "-f", "%k=%s@%o\n"], capture_output=True, text=True, check=True, timeout=60).stdout
        got = out.strip().split("\n")
        self.assertEqual(got, [f"k{i}=value {i}@{i}" for i in range(100)])
        rows = self.server.sql("SELECT count(*), min(_offset), max(_offset) FROM kc")
        self.assertEqual(rows, [(100, 0, 99)])

    def test_groups_split_rebalance_commit_and_resume_after_restart(self):
        from confluent_kafka import Consumer, Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.server.bootstrap})
        for f in admin.create_topics([NewTopic("orders", num_partitions=4, replication_factor=1)]).values():
            f.result(30)
        n = 100_000
        producer = Producer({
            "bootstrap.servers": self.server.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 5,
            # The Java client's partitioner, which Tidebase's SQL INSERT uses too.
            "partitioner": "murmur2_random",
        })
        delivered = {}

        def on_delivery(err, msg):
            self.assertIsNone(err)
            delivered[msg.key().decode()] = msg.partition()

        for i in range(n):
            while True:
                try:
                    producer.produce("orders", key=f"user{i % 1000}", value=f"order {i}", on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
            if i % 5000 == 0:
                producer.poll(0)
        self.assertEqual(producer.flush(60), 0)
        self.assertEqual(self.server.sql("SELECT count(*) FROM orders"), [(n,)])
        # A key lands where Tidebase's own partitioner puts it.
        self.server.sql("CREATE TOPIC orders_sql (user_id TEXT) WITH (PARTITIONS = 4, KEY = user_id)")
        self.server.sql("INSERT INTO orders_sql (user_id) SELECT 'user' || CAST(x AS TEXT) FROM "
                        "(SELECT unnest(range(0, 1000)) AS x) AS t")
        sql_partition = dict((k, p) for k, p in self.server.sql(
            "SELECT user_id, _partition FROM orders_sql"))
        self.assertEqual(sql_partition, delivered)

        conf = {"bootstrap.servers": self.server.bootstrap, "group.id": "billing",
                "auto.offset.reset": "earliest", "enable.auto.commit": False,
                "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
        a = Consumer(dict(conf, **{"client.id": "a"}))
        b = Consumer(dict(conf, **{"client.id": "b"}))
        a.subscribe(["orders"])
        b.subscribe(["orders"])
        deadline = time.time() + 60
        while time.time() < deadline:
            a.poll(0.2)
            b.poll(0.2)
            pa = {tp.partition for tp in a.assignment()}
            pb = {tp.partition for tp in b.assignment()}
            if pa and pb and not (pa & pb) and pa | pb == {0, 1, 2, 3}:
                break
        self.assertTrue(pa and pb, f"both consumers got partitions: {pa} {pb}")
        self.assertFalse(pa & pb)
        self.assertEqual(pa | pb, {0, 1, 2, 3})
        # b leaves: a takes every partition.
        b.close()
        deadline = time.time() + 60
        while time.time() < deadline and {tp.partition for tp in a.assignment()} != {0, 1, 2, 3}:
            a.poll(0.2)
        self.assertEqual({tp.partition for tp in a.assignment()}, {0, 1, 2, 3})
        # Read about half, commit exactly what was read.
        msgs = drain(a, n // 2, timeout=60)
        self.assertEqual(len(msgs), n // 2)
        seen = {(m.partition(), m.offset()) for m in msgs}
        last = {}
        for m in msgs:
            last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
        from confluent_kafka import TopicPartition
        a.commit(offsets=[TopicPartition("orders", p, o + 1) for p, o in last.items()], asynchronous=False)
        a.close()
        committed = {p: o for (p, o) in self.server.sql(
            "SELECT partition, committed_offset FROM tidebase.consumer_groups WHERE group_id = 'billing'")}
        self.assertEqual(committed, {p: o + 1 for p, o in last.items()})
        ends = dict(self.server.sql("SELECT _partition, max(_offset) + 1 FROM orders GROUP BY _partition"))
        lag = self.server.sql("SELECT partition, latest_offset, lag FROM tidebase.consumer_groups "
                              "WHERE group_id = 'billing'")
        self.assertEqual(sorted(lag), sorted((p, ends[p], ends[p] - o) for p, o in committed.items()))

        # Restart the server (SIGKILL: nothing acknowledged may be lost).
        self.server.kill()
        self.server.start()
        self.assertEqual(self.server.sql("SELECT count(*) FROM orders"), [(n,)])
        c = Consumer(dict(conf, **{"client.id": "c"}))
        c.subscribe(["orders"])
        left = n - sum(committed.values())
        rest = drain(c, left, timeout=90)
        self.assertEqual(len(rest), left)
        self.assertFalse({(m.partition(), m.offset()) for m in rest} & seen, "resumed after the committed offsets")
        for m in rest:
            self.assertGreaterEqual(m.offset(), committed.get(m.partition(), 0))
        self.assertIsNone(c.poll(1.0))
        c.close()

    def test_kafka_python_and_json_columns_with_rejects(self):
        from kafka import KafkaConsumer, KafkaProducer

        self.server.sql("CREATE TOPIC clicks (user_id TEXT, url TEXT, n INT) WITH (PARTITIONS = 2, KEY = user_id)")
        p = KafkaProducer(bootstrap_servers=self.server.bootstrap, acks="all")
        p.send("clicks", key=b"u1", value=b'{"user_id": "u1", "url": "/a", "n": 1}')
        p.send("clicks", key=b"u2", value=b'{"user_id": "u2", "url": "/b", "n": "not a number"}')
        p.send("clicks", key=b"u3", value=b"not json")
        p.send("clicks", key=b"u4", value=b'{"user_id": "u4", "n": 4}')
        p.flush(30)
        p.close()
        rows = self.server.sql("SELECT user_id, url, n FROM clicks ORDER BY user_id")
        self.assertEqual(rows, [("u1", "/a", 1), ("u4", None, 4)])
        rejects = self.server.sql("SELECT reason, key FROM tidebase.rejects WHERE topic = 'clicks' ORDER BY key")
        self.assertEqual([bytes(k) for _, k in rejects], [b"u2", b"u3"])
        self.assertIn('column "n"', rejects[0][0])
        self.assertIn("not JSON", rejects[1][0])
        self.assertEqual(self.server.sql("SELECT rejected FROM tidebase.topics WHERE topic = 'clicks'"), [(2,)])
        # Rows written by SQL are JSON that Kafka consumers read.
        self.server.sql("INSERT INTO clicks (user_id, url, n) VALUES ('u5', '/e', 5)")
        c = KafkaConsumer("clicks", bootstrap_servers=self.server.bootstrap, auto_offset_reset="earliest",
                          consumer_timeout_ms=5000, group_id=None)
        values = sorted(m.value for m in c)
        c.close()
        self.assertEqual(len(values), 3)
        self.assertIn(b'{"user_id":"u5","url":"/e","n":5}', values)


if __name__ == "__main__":
    if "TIDEBASE_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--quiet", "-p", "tidebase-server", "--bin", "tidebase"],
                       cwd=ROOT, check=True)
    unittest.main(verbosity=2)
