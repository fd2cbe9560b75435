#!/usr/bin/env python3
"""Side-by-side benchmark of Ferry and the peer brokers Debian ships, on loopback, in one run.

Started by `benches/compare/run`, which installs the peers and builds the load generators first. This script:

1. measures the machine's ceilings: loopback TCP (iperf3), sequential writes with an fdatasync after each 1 MiB
   (fio), and the latency of one fdatasync after a 16 KiB write (fio);
2. starts each broker on 127.0.0.1 with its data under --work-dir (never a tmpfs), runs the workloads against it,
   and stops it: Ferry through `ferry-bench`, Redis Streams, NATS JetStream and RabbitMQ through `peerbench`;
3. prints one table of absolute figures and ratios (Ferry / peer, Ferry / ceiling) and writes
   benches/results/compare.json plus PNG charts.

Every run reports the device flushes it caused (field 16 of /sys/block/DEV/stat), so the durability class a figure
is filed under is measured, not assumed.

Workloads (../shared/research/peers.md section 6, issue 8):
  W1  throughput, acknowledged before fsync: 100 B and 1 KiB, 1 and 4 producers, batches of about 100 and 1000
  W2  the same, fsync before acknowledging (Ferry with idempotent producers)
  W3  latency, one message in flight, durable and not
  W4  end-to-end: Ferry producers at W2's rate with a consumer; lag must not grow
  W5  scale: Ferry with 1 to 1,000 partitions and 1 to 64 producers; broker memory, 1,000 idle partitions
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A batch of N for Ferry: the client's batch closes at about N records, and each producer keeps 2N records
# unacknowledged (two requests in flight). Peers publish messages one by one, so they get the same 2N in flight.
RECORD_OVERHEAD = 24
BATCH_OVERHEAD = 128
CEILING_CASE = "1024 B, 4 prod, batch 1000, 16 in flight"


def log(message):
    print(message, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, seconds, process=None):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def block_device(path):
    """The whole-disk block device under `path`, for its flush counter."""
    dev = os.stat(path).st_dev
    sys_path = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    if (sys_path / "partition").exists():
        sys_path = sys_path.parent
    return sys_path / "stat"


class FlushCounter:
    def __init__(self, path):
        self.stat = block_device(path)

    def read(self):
        try:
            fields = self.stat.read_text().split()
            return int(fields[15]) if len(fields) > 15 else None
        except OSError:
            return None


def load_average():
    return float(Path("/proc/loadavg").read_text().split()[0])


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    """A broker child process; stopped with SIGTERM (then SIGKILL) and its data removed."""

    def __init__(self, name, argv, port, data, env=None, start_seconds=30, cwd=None):
        self.name, self.port, self.data = name, port, data
        self.log_path = data.parent / f"{name}.log"
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(a) for a in argv], stdout=self.log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            start_new_session=True,
        )
        try:
            wait_for_port(port, start_seconds, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"{name} did not start; its log: {self.log_path}")

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log_file.close()


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work_dir)
        self.flushes = FlushCounter(self.work)
        self.results = []
        self.ceilings = {}
        self.bin = Path(args.target_dir) / "release"

    # ---- one measured run -------------------------------------------------------------------------------------

    def measure(self, meta, argv, env=None):
        """Runs a load generator that prints one JSON object; records it with flushes and load average."""
        argv = [str(a) for a in argv]
        before, load = self.flushes.read(), load_average()
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=self.args.run_timeout)
        after = self.flushes.read()
        if done.returncode != 0:
            log(f"  FAILED ({' '.join(map(str, argv))}): {done.stderr.strip()[-400:]}")
            result = dict(meta, error=done.stderr.strip()[-400:])
        else:
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            result = dict(meta, **figures)
            if before is not None and after is not None:
                result["device_flushes"] = after - before
            result["load_average"] = load
            log(
                f"  {meta['workload']:<3} {meta['broker']:<16} {meta['label']:<34} "
                f"{result['messages_per_sec']:>11,.0f} msg/s {result['mb_per_sec']:>7.1f} MB/s  "
                f"p50 {result['p50_ms']:.3f} p99 {result['p99_ms']:.3f} ms  flushes {result.get('device_flushes', '?')}"
            )
        result["command"] = " ".join(map(str, argv))
        self.results.append(result)
        return result

    def count_for(self, rate_guess):
        """Messages for a run of about --seconds at the rate a short calibration run measured."""
        return int(min(max(rate_guess * self.args.seconds, 2_000), 5_000_000))

    # ---- ceilings -----------------------------------------------------------------------------------------------

    def measure_ceilings(self):
        log("== machine ceilings")
        port = free_port()
        # No probe connection first: iperf3 would take it for a test and reject the next one.
        iperf = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL)
        try:
            for _ in range(25):
                time.sleep(0.2)
                client = subprocess.run(
                    ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "3", "-l", "128K", "-J"],
                    capture_output=True, text=True,
                )
                try:
                    received = json.loads(client.stdout)["end"]["sum_received"]["bits_per_second"]
                except (ValueError, KeyError):
                    continue
                self.ceilings["loopback_mb_per_sec"] = received / 8e6
                break
            else:
                log(f"  iperf3 gave no result: {client.stdout[-300:]} {client.stderr[-300:]}")
        finally:
            iperf.terminate()
            iperf.wait(10)
        fio_dir = self.work / "fio"
        fio_dir.mkdir(parents=True, exist_ok=True)

        def fio(name, block, size, extra=()):
            out = subprocess.run(
                ["fio", f"--name={name}", f"--directory={fio_dir}", "--rw=write", f"--bs={block}", f"--size={size}",
                 "--ioengine=psync", "--fdatasync=1", "--output-format=json", *extra],
                capture_output=True, text=True, check=True,
            ).stdout
            return json.loads(out)["jobs"][0]

        flushes_before = self.flushes.read()
        job = fio("seq-fdatasync", "1M", "1G")
        self.ceilings["fdatasync_write_mb_per_sec"] = job["write"]["bw_bytes"] / 1e6
        job = fio("fdatasync-latency", "16k", "64M")
        sync = job["sync"]["lat_ns"]["percentile"]
        self.ceilings["fdatasync_p50_ms"] = sync["50.000000"] / 1e6
        self.ceilings["fdatasync_p99_ms"] = sync["99.000000"] / 1e6
        self.ceilings["fdatasync_per_sec"] = job["write"]["iops"]
        self.ceilings["device_flushes"] = (self.flushes.read() or 0) - (flushes_before or 0)
        shutil.rmtree(fio_dir)
        self.ceilings["load_average"] = load_average()
        log("  " + ", ".join(f"{k} {v:,.2f}" for k, v in self.ceilings.items()))

    # ---- Ferry ---------------------------------------------------------------------------------------------------

    def start_ferry(self):
        data = self.work / "ferry" / "data"
        shutil.rmtree(data.parent, ignore_errors=True)
        data.mkdir(parents=True)
        port, metrics = free_port(), free_port()
        argv = [self.bin / "ferry-broker", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                "--metrics-listen", f"127.0.0.1:{metrics}", "--fsync", "always"]
        return Server("ferry", argv, port, data)

    def ferry(self, server, workload, label, scenario, *, size, producers=1, partitions=1, batch=100,
              durable=True, count=None, extra=(), topic=None, window=None):
        self.topic_seq = getattr(self, "topic_seq", 0) + 1
        topic = topic or f"t{self.topic_seq}"
        argv = [self.bin / "ferry-bench", scenario, "--broker", f"127.0.0.1:{server.port}", "--topic", topic,
                "--partitions", partitions, "--producers", producers, "--message-size", size,
                "--batch-bytes", batch * (size + RECORD_OVERHEAD) + BATCH_OVERHEAD, "--window", window or 2 * batch, "--linger-ms", 1, "--keys", "none",
                "--fsync", "always" if durable else "never", "--json"]
        if durable:
            argv.append("--idempotent")
        argv += list(extra)
        meta = dict(workload=workload, broker="ferry", label=label, durable=durable, batch=batch)
        if count is None:
            calibration = self.measure(dict(meta, calibration=True), argv + ["--messages", 20_000 * producers])
            self.results.pop()
            count = self.count_for(calibration.get("messages_per_sec", 10_000))
            argv[argv.index("--topic") + 1] = topic + "m"
        return self.measure(meta, argv + ["--messages", count])

    # ---- peers ---------------------------------------------------------------------------------------------------

    def start_redis(self, appendfsync):
        data = self.work / f"redis-{appendfsync}" / "data"
        shutil.rmtree(data.parent, ignore_errors=True)
        data.mkdir(parents=True)
        port = free_port()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--save", "",
                "--appendonly", "yes", "--appendfsync", appendfsync, "--auto-aof-rewrite-percentage", "0",
                "--protected-mode", "yes"]
        return Server(f"redis-{appendfsync}", argv, port, data)

    def start_nats(self):
        data = self.work / "nats" / "data"
        shutil.rmtree(data.parent, ignore_errors=True)
        data.mkdir(parents=True)
        port = free_port()
        conf = data.parent / "js.conf"
        conf.write_text(
            f"listen: 127.0.0.1:{port}\njetstream {{ store_dir: {data}, max_memory_store: 1G, max_file_store: 20G }}\n"
        )
        return Server("nats", ["nats-server", "-c", str(conf)], port, data)

    def start_rabbitmq(self):
        base = self.work / "rabbitmq"
        shutil.rmtree(base, ignore_errors=True)
        data = base / "data"
        data.mkdir(parents=True)
        port, dist = free_port(), free_port()
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n")
        (base / "enabled_plugins").write_text("[].\n")
        env = dict(
            os.environ,
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"), RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(data), RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_NODENAME=f"ferrycompare{port}@localhost", RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            ERL_EPMD_ADDRESS="127.0.0.1", RABBITMQ_DIST_PORT=str(dist), HOME=str(base),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        if os.geteuid() == 0 and shutil.which("runuser"):
            shutil.chown(base, "rabbitmq", "rabbitmq")
            for path in base.rglob("*"):
                shutil.chown(path, "rabbitmq", "rabbitmq")
            argv = ["runuser", "-u", "rabbitmq", "--", "/usr/lib/rabbitmq/bin/rabbitmq-server"]
        else:
            argv = ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
        return Server("rabbitmq", argv, port, data, env=env, start_seconds=120)

    def peer(self, server, peer, broker_label, workload, label, *, size, producers=1, batch=100, durable,
             queue_type=None, count=None):
        window = 2 * batch if batch > 1 else 1
        argv = [self.args.peerbench, "-peer", peer, "-address", f"127.0.0.1:{server.port}", "-producers", producers,
                "-size", size, "-window", window]
        if queue_type:
            argv += ["-queue-type", queue_type]
        meta = dict(workload=workload, broker=broker_label, label=label, durable=durable, batch=batch)
        if count is None:
            calibration = self.measure(dict(meta, calibration=True), argv + ["-messages", 5_000 * producers])
            self.results.pop()
            count = self.count_for(calibration.get("messages_per_sec", 2_000))
        return self.measure(meta, argv + ["-messages", count])

    # ---- the matrix ----------------------------------------------------------------------------------------------

    def throughput_matrix(self):
        sizes = [100, 1024]
        producers = [1, 4]
        batches = [100, 1000]
        if self.args.quick:
            sizes, producers, batches = [100, 1024], [1, 4], [1000]
        for size in sizes:
            for p in producers:
                for batch in batches:
                    yield size, p, batch

    def label(self, size, producers, batch):
        return f"{size} B, {producers} prod, batch {batch}"

    def run_ferry(self):
        log("== ferry")
        server = self.start_ferry()
        try:
            for durable, workload in ((False, "W1"), (True, "W2")):
                for size, p, batch in self.throughput_matrix():
                    self.ferry(server, workload, self.label(size, p, batch), "produce", size=size, producers=p,
                               partitions=p, batch=batch, durable=durable)
            # The disk's bar: durable 1 KiB records with a pipeline deep enough to keep the disk busy (16 batches of
            # 1000 per producer in flight); the ratio to the fdatasync write ceiling is taken on this case.
            self.ferry(server, "W2", CEILING_CASE, "produce", size=1024, producers=4, partitions=4, batch=1000,
                       durable=True, window=16_000)
            for durable in (False, True):
                for size in (100, 1024):
                    self.ferry(server, "W3", f"{size} B, 1 in flight", "latency", size=size, durable=durable,
                               batch=1, count=2_000 if durable else 20_000, extra=["--warmup", 200])
            # W4: W2's 4-producer 1 KiB and 100 B workloads with a consumer reading as they are written.
            for size in (100, 1024):
                self.ferry(server, "W4", f"{size} B, 4 prod + 1 cons", "end-to-end", size=size, producers=4,
                           partitions=4, batch=1000, durable=True, count=(2_000_000 if size == 100 else 400_000)
                           // (4 if self.args.quick else 1))
        finally:
            server.stop()
        self.run_scale()

    def run_scale(self):
        log("== ferry scale (W5)")
        server = self.start_ferry()
        try:
            self.idle_partitions(server)
            partitions = [1, 8, 64, 1000]
            for n in partitions:
                r = self.ferry(server, "W5", f"100 B, {n} partitions, 4 prod", "produce", size=100, producers=4,
                               partitions=n, batch=1000, durable=True)
                r["scale"], r["broker_rss_mib"] = "partitions", rss_mib(server.pid)
            for p in [1, 4, 16, 64]:
                r = self.ferry(server, "W5", f"100 B, 64 partitions, {p} prod", "produce", size=100, producers=p,
                               partitions=64, batch=1000, durable=True)
                r["broker_rss_mib"] = rss_mib(server.pid)
            for size in [100, 1024, 16384]:
                r = self.ferry(server, "W5", f"{size} B, 8 partitions, 4 prod", "produce", size=size, producers=4,
                               partitions=8, batch=max(1000 * 100 // size, 16), durable=True)
                r["broker_rss_mib"] = rss_mib(server.pid)
        finally:
            server.stop()

    def idle_partitions(self, server):
        """Broker memory with 1,000 partitions created and idle (a fresh broker, one topic of 1,000 partitions)."""
        before = rss_mib(server.pid)
        argv = [self.bin / "ferry-bench", "produce", "--broker", f"127.0.0.1:{server.port}", "--topic", "idle1000",
                "--partitions", 1000, "--messages", 1000, "--producers", 1, "--window", 100, "--json"]
        subprocess.run(list(map(str, argv)), capture_output=True, check=True, timeout=120)
        time.sleep(5)
        self.results.append(dict(workload="W5", broker="ferry", label="1,000 idle partitions (memory)",
                                 broker_rss_mib_before=before, broker_rss_mib=rss_mib(server.pid)))
        log(f"  W5  ferry idle: RSS {before:.1f} MiB fresh, {rss_mib(server.pid):.1f} MiB with 1,000 partitions")

    def run_redis(self):
        for appendfsync, durable, workloads in (("everysec", False, ("W1", "W3")), ("always", True, ("W2", "W3"))):
            log(f"== redis appendfsync {appendfsync}")
            server = self.start_redis(appendfsync)
            name = f"redis-{appendfsync}"
            try:
                for size, p, batch in self.throughput_matrix():
                    self.peer(server, "redis", name, workloads[0], self.label(size, p, batch), size=size, producers=p,
                              batch=batch, durable=durable)
                for size in (100, 1024):
                    self.peer(server, "redis", name, "W3", f"{size} B, 1 in flight", size=size, batch=1,
                              durable=durable, count=2_000 if durable else 20_000)
            finally:
                server.stop()

    def run_nats(self):
        log("== nats jetstream (file store; acknowledges before fsync)")
        server = self.start_nats()
        try:
            for size, p, batch in self.throughput_matrix():
                self.peer(server, "nats", "nats-js", "W1", self.label(size, p, batch), size=size, producers=p,
                          batch=batch, durable=False)
            for size in (100, 1024):
                self.peer(server, "nats", "nats-js", "W3", f"{size} B, 1 in flight", size=size, batch=1,
                          durable=False, count=20_000)
        finally:
            server.stop()

    def run_rabbitmq(self):
        log("== rabbitmq (stream: no fsync; quorum: fsync before confirm)")
        server = self.start_rabbitmq()
        try:
            for queue_type, durable, workload in (("stream", False, "W1"), ("quorum", True, "W2")):
                name = f"rabbitmq-{queue_type}"
                for size, p, batch in self.throughput_matrix():
                    self.peer(server, "amqp", name, workload, self.label(size, p, batch), size=size, producers=p,
                              batch=batch, durable=durable, queue_type=queue_type)
                for size in (100, 1024):
                    self.peer(server, "amqp", name, "W3", f"{size} B, 1 in flight", size=size, batch=1,
                              durable=durable, queue_type=queue_type, count=2_000)
        finally:
            server.stop()


# ---- report -----------------------------------------------------------------------------------------------------

def summarize(bench):
    """Ratios against each target of issue 8; returns a list of (target, figure, verdict) rows."""
    results = [r for r in bench.results if "error" not in r and "messages_per_sec" in r]
    ceilings = bench.ceilings

    def find(workload, broker, label):
        for r in results:
            if r["workload"] == workload and r["broker"] == broker and r["label"] == label:
                return r
        return None

    def best_peer(workload, label, durable):
        peers = [r for r in results if r["workload"] == workload and r["label"] == label and r["broker"] != "ferry"
                 and r["durable"] == durable]
        return max(peers, key=lambda r: r["messages_per_sec"], default=None)

    rows = []
    for size, p, batch in bench.throughput_matrix():
        label = bench.label(size, p, batch)
        for workload, durable in (("W1", False), ("W2", True)):
            ours, peer = find(workload, "ferry", label), best_peer(workload, label, durable)
            if ours and peer:
                ratio = ours["messages_per_sec"] / peer["messages_per_sec"]
                if workload == "W1":
                    goal, bar = "ahead of every peer", 1.0
                else:
                    bar = 3.0 if p == 4 else 1.5
                    goal = f">= {bar}x the best peer" if size == 100 else "(1 KiB: see the ceiling row)"
                verdict = ("met" if ratio >= bar else "NOT met") if (workload == "W1" or size == 100) else "-"
                rows.append((f"{workload} {label}: ferry / {peer['broker']}", f"{ratio:.2f}x", goal, verdict))
            if workload == "W2" and size == 1024 and ours and "fdatasync_write_mb_per_sec" in ceilings:
                ratio = ours["mb_per_sec"] / ceilings["fdatasync_write_mb_per_sec"]
                rows.append((f"W2 {label}: ferry / fdatasync write ceiling", f"{ratio:.0%}", "(pipeline of 2)", "-"))
    deep = find("W2", "ferry", CEILING_CASE)
    if deep and "fdatasync_write_mb_per_sec" in ceilings:
        ratio = deep["mb_per_sec"] / ceilings["fdatasync_write_mb_per_sec"]
        rows.append((f"W2 {CEILING_CASE}: ferry / fdatasync write ceiling", f"{ratio:.0%}", ">= 85%",
                     "met" if ratio >= 0.85 else "NOT met"))
    for size in (100, 1024):
        label = f"{size} B, 1 in flight"
        durable = [r for r in results if r["workload"] == "W3" and r["broker"] == "ferry" and r["label"] == label
                   and r["durable"]]
        fast = [r for r in results if r["workload"] == "W3" and r["broker"] == "ferry" and r["label"] == label
                and not r["durable"]]
        if durable and "fdatasync_p99_ms" in ceilings:
            ratio = durable[0]["p99_ms"] / ceilings["fdatasync_p99_ms"]
            rows.append((f"W3 {label}: durable p99 / one fdatasync's p99", f"{ratio:.2f}x", "<= 1.5x",
                         "met" if ratio <= 1.5 else "NOT met"))
        if fast:
            p50_us = fast[0]["p50_ms"] * 1000
            rows.append((f"W3 {label}: non-durable p50", f"{p50_us:.0f} µs", "< 100 µs",
                         "met" if p50_us < 100 else "NOT met"))
    for r in results:
        if r["workload"] == "W4":
            slope = r.get("lag_slope_per_sec", 0.0)
            rate = r.get("produce_messages_per_sec", r["messages_per_sec"])
            growth = slope / max(rate, 1)
            rows.append((f"W4 {r['label']}: lag trend while producing", f"{slope:+,.0f} rec/s ({growth:+.1%} of "
                         f"{rate:,.0f} rec/s), max {r.get('lag_max_records', 0):,}", "no growth (< 1% of rate)",
                         "met" if growth < 0.01 else "NOT met"))
    scale = {r["partitions"]: r for r in results if r.get("scale") == "partitions"}
    if 8 in scale and 1000 in scale:
        ratio = scale[1000]["messages_per_sec"] / scale[8]["messages_per_sec"]
        rows.append(("W5 1,000 partitions / 8 partitions throughput", f"{ratio:.0%}", ">= 70%",
                     "met" if ratio >= 0.7 else "NOT met"))
    idle = [r for r in bench.results if r.get("label") == "1,000 idle partitions (memory)"]
    if idle:
        rows.append(("W5 broker RSS with 1,000 idle partitions", f"{idle[0]['broker_rss_mib']:.0f} MiB", "< 256 MiB",
                     "met" if idle[0]["broker_rss_mib"] < 256 else "NOT met"))
    return rows


def print_report(bench, rows):
    results = [r for r in bench.results if "messages_per_sec" in r]
    print()
    print(f"Ferry side-by-side, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"commit {git_commit()}")
    print("Ceilings: " + ", ".join(f"{k} {v:,.2f}" for k, v in bench.ceilings.items()))
    print()
    print("| workload | broker | case | msg/s | MB/s | p50 ms | p99 ms | p99.9 ms | flushes | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['workload']} | {r['broker']} | {r['label']} | {r['messages_per_sec']:,.0f} | "
              f"{r['mb_per_sec']:.1f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['p999_ms']:.3f} | "
              f"{r.get('device_flushes', '?')} | {r.get('load_average', 0):.1f} |")
    for r in bench.results:
        if "error" in r:
            print(f"| {r['workload']} | {r['broker']} | {r['label']} | failed: {r['error'][:80]} |")
    print()
    print("| target | measured | goal | verdict |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def git_commit():
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def charts(bench, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no charts (benches/compare/run installs python3-matplotlib)")
        return
    results = [r for r in bench.results if "messages_per_sec" in r]
    brokers = sorted({r["broker"] for r in results if r["workload"] in ("W1", "W2")}, key=lambda b: (b != "ferry", b))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, workload, title in ((axes[0], "W1", "acknowledged before fsync (W1)"),
                                (axes[1], "W2", "fsync before acknowledgement (W2)")):
        labels = [bench.label(*c) for c in bench.throughput_matrix()]
        present = [b for b in brokers if any(r["broker"] == b and r["workload"] == workload for r in results)]
        width = 0.8 / max(len(present), 1)
        for i, broker in enumerate(present):
            values = []
            for label in labels:
                match = [r for r in results if r["workload"] == workload and r["broker"] == broker
                         and r["label"] == label]
                values.append(match[0]["messages_per_sec"] / 1e3 if match else 0)
            ax.bar([x + i * width for x in range(len(labels))], values, width, label=broker)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))])
        ax.set_xticklabels([label.replace(", ", "\n") for label in labels], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("thousand messages/s (log)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"Throughput by message size and durability ({os.cpu_count()} cores, commit {git_commit()})")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    w3 = [r for r in results if r["workload"] == "W3"]
    if w3:
        fig, ax = plt.subplots(figsize=(12, 5))
        names = [f"{r['broker']}\n{r['label'].split(',')[0]}\n{'durable' if r['durable'] else 'no fsync'}" for r in w3]
        for i, (key, pct) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))):
            ax.bar([x + i * 0.27 for x in range(len(w3))], [max(r[key], 0.001) for r in w3], 0.27, label=pct)
        if "fdatasync_p99_ms" in bench.ceilings:
            ax.axhline(bench.ceilings["fdatasync_p99_ms"], color="grey", linestyle="--", label="one fdatasync, p99")
        ax.set_xticks([x + 0.27 for x in range(len(w3))])
        ax.set_xticklabels(names, fontsize=6)
        ax.set_yscale("log")
        ax.set_ylabel("ms from send to acknowledgement (log)")
        ax.set_title("Latency, one message in flight (W3)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)

    w5 = [r for r in results if r.get("scale") == "partitions"]
    if w5:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot([r["partitions"] for r in w5], [r["messages_per_sec"] / 1e3 for r in w5], marker="o",
                label="thousand msg/s")
        ax.set_xscale("log")
        ax.set_xlabel("partitions (4 producers, 100 B, fsync always)")
        ax.set_ylabel("thousand messages/s")
        ax2 = ax.twinx()
        ax2.plot([r["partitions"] for r in w5], [r.get("broker_rss_mib", 0) for r in w5], color="tab:red",
                 marker="s", label="broker RSS MiB")
        ax2.set_ylabel("broker RSS (MiB)")
        ax.set_title("Ferry: cost of partitions (W5)")
        fig.tight_layout()
        fig.savefig(out / "scale.png", dpi=110)
        plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", default="ferry,redis,nats,rabbitmq",
                        help="comma-separated subset of ferry,redis,nats,rabbitmq")
    parser.add_argument("--quick", action="store_true", help="batches of 1000 only, shorter W4")
    parser.add_argument("--seconds", type=float, default=3.0, help="target length of one measured run")
    parser.add_argument("--work-dir", default="/var/tmp/ferry-compare", help="data directories (not a tmpfs)")
    parser.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")))
    parser.add_argument("--peerbench", required=True, help="path of the built peerbench")
    parser.add_argument("--out", default=str(ROOT / "benches" / "results"))
    parser.add_argument("--run-timeout", type=float, default=300)
    args = parser.parse_args()
    args.peerbench = str(Path(args.peerbench).resolve())
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    bench.measure_ceilings()
    wanted = args.brokers.split(",")
    for name in ("ferry", "redis", "nats", "rabbitmq"):
        if name in wanted:
            try:
                getattr(bench, f"run_{name}")()
            except RuntimeError as error:
                log(f"{name}: {error}")
                bench.results.append(dict(workload="-", broker=name, label="start", error=str(error)))
    rows = summarize(bench)
    print_report(bench, rows)
    document = dict(
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), commit=git_commit(), cores=os.cpu_count(),
        command=" ".join(sys.argv), seconds=round(time.time() - started), ceilings=bench.ceilings,
        results=bench.results, targets=[dict(zip(("target", "measured", "goal", "verdict"), row)) for row in rows],
    )
    (out / "compare.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    charts(bench, out)
    log(f"results: {out}/compare.json, throughput.png, latency.png, scale.png ({round(time.time() - started)} s)")


if __name__ == "__main__":
    main()
