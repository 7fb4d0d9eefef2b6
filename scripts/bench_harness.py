"""What the Python `scripts/bench*` scripts share: where the release binary
and the corpus live, how to build and generate them, and how to run sluice
on the corpus and read back its time, CPU and memory.

Each script imports it with the scripts folder on sys.path:

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_harness as bench

CPU and max RSS of a run come from GNU time (`/usr/bin/time`, Debian
package `time`): its fork before exec is tiny, so ru_maxrss is sluice's
own, where a fork of the Python process would count Python's memory too.

scripts/bench-files stays bash and does not use this module: its corpus is
its own CRI generator (lines of another shape, split over 1,000 files), its
runs read `/usr/bin/time -v`, and what it shares with the rest is one
`cargo build` line and the path of the binary.
"""
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The checkout the scripts belong to."""
BIN = os.path.join(ROOT, "target", "release", "sluice")
"""The release binary that `build_release` builds."""
BENCH_DIR = os.path.join(ROOT, "target", "bench")
"""Corpora and scratch files of the benches; under target/, so `cargo clean` removes them."""
TEST_CACHE = os.environ.get("SLUICE_TEST_CACHE", os.path.expanduser("~/.cache/sluice-test"))
"""Where scripts/test installs the real services (tansu, s3s-fs, the Python venv)."""
LINES = 2_000_000
"""Lines in the standard corpus: every figure in BENCHMARKS.md is on this size unless it says otherwise."""
SEED = 42
"""The corpus seed: the same seed gives the same bytes on every machine."""
GNU_TIME = "/usr/bin/time"


def build_release(*examples):
    """`cargo build --release` of the sluice binary and the named examples."""
    argv = ["cargo", "build", "--release", "--bin", "sluice"]
    for example in examples:
        argv += ["--example", example]
    subprocess.run(argv, cwd=ROOT, check=True)


def corpus(lines=LINES, fmt="ndjson", secrets=0):
    """The path of `scripts/gen-corpus --lines LINES --seed 42 --format FMT`'s
    output (with `--secrets SECRETS` when given) under BENCH_DIR, generating
    it the first time (through a .tmp file, so an interrupted run leaves no
    half corpus)."""
    os.makedirs(BENCH_DIR, exist_ok=True)
    tag = f"-secrets{secrets}" if secrets else ""
    path = os.path.join(BENCH_DIR, f"corpus-{lines}-{fmt}{tag}.log")
    if not os.path.exists(path):
        print(f"generating {path} ...", file=sys.stderr)
        with open(path + ".tmp", "wb") as f:
            subprocess.run([os.path.join(ROOT, "scripts", "gen-corpus"), "--lines", str(lines), "--seed", str(SEED),
                            "--format", fmt, "--secrets", str(secrets)], stdout=f, check=True)
        os.rename(path + ".tmp", path)
    return path


def corpus_pieces(path, total=64 << 20, piece=1 << 20):
    """The first `total` bytes of the corpus (whole lines only) cut into
    pieces of about `piece` bytes, each ending at a line end: what a feeder
    thread writes to sluice's stdin over and over."""
    with open(path, "rb") as f:
        data = f.read(total)
    data = data[: data.rfind(b"\n") + 1]
    pieces, start = [], 0
    while start < len(data):
        end = data.index(b"\n", min(start + piece, len(data) - 1)) + 1
        pieces.append(data[start:end])
        start = end
    return pieces


def free_port():
    """A loopback TCP port nothing listens on at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port, timeout=30, proc=None):
    """Whether something accepts on 127.0.0.1:`port` within `timeout`
    seconds; False early if `proc` (the server) has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc is not None and proc.poll() is not None:
                return False
            time.sleep(0.02)
    return False


def vm_hwm_kib(pid):
    """The peak resident set (VmHWM in /proc/<pid>/status) of a live process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def load_average():
    """The one-minute load average as /proc/loadavg writes it."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def proc_stat(pid):
    """(name, the fields after it) of /proc/PID/stat; None once it is gone.
    The fields start with the state, then the parent's pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()


def busy_neighbours(samples=5, interval=0.1):
    """Other processes that ran while this one looked (state R in any of
    `samples` looks at /proc), or that sit in the idle scheduling class:
    [(pid, name)]. An idle-class fuzzer still takes a quarter of the pipe's
    throughput (BENCHMARKS.md, "Idle-class fuzzers and the pipe")."""
    found = {}
    # This process and the shells that started it are not neighbours.
    mine = set()
    pid = os.getpid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        stat = proc_stat(pid)
        if stat is None:
            break
        pid = int(stat[1][1])
    for _ in range(samples):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in mine:
                continue
            stat = proc_stat(entry)
            if stat is None:
                continue
            name, fields = stat
            # fields[0] is the state, fields[6] the flags (0x200000: a
            # kernel thread), fields[38] the policy (5: SCHED_IDLE).
            if int(fields[6]) & 0x200000:
                continue
            if fields[0] == "R" or (len(fields) > 38 and fields[38] == "5"):
                found[int(entry)] = name
        time.sleep(interval)
    return sorted(found.items())


def warn_if_shared():
    """Says on stderr when other processes compete for the CPUs, since the
    figures then read them too."""
    others = busy_neighbours()
    if others:
        names = ", ".join(f"{name} ({pid})" for pid, name in others[:6])
        print(f"warning: other processes are using the CPU: {names}; the figures will read them too",
              file=sys.stderr)


def require_gnu_time():
    """Exits, naming the package to install, when GNU time is missing."""
    if not os.path.exists(GNU_TIME):
        sys.exit(f"scripts/{os.path.basename(sys.argv[0])} needs GNU time: apt-get install time")


def gnu_timed(argv):
    """`argv` prefixed with GNU time writing "wall user sys maxrss_kib" to a
    file; returns (that argv, the file) for `read_gnu_time`."""
    require_gnu_time()
    out = os.path.join(BENCH_DIR, f"time-{os.getpid()}.out")
    os.makedirs(BENCH_DIR, exist_ok=True)
    return [GNU_TIME, "-o", out, "-f", "%e %U %S %M"] + argv, out


def read_gnu_time(out):
    """(CPU s = user + sys, max RSS KiB) from a `gnu_timed` file, which it removes."""
    with open(out) as f:
        _, user, sys_, rss = f.read().split()[-4:]
    os.unlink(out)
    return float(user) + float(sys_), int(rss)


def run_on_file(argv, path, env, through_cat=True, stdout=subprocess.DEVNULL):
    """Runs `argv` with the file at `path` as its stdin: through a `cat`
    pipe (a writer process, as a log producer would be) or the file itself.
    Returns (wall s from start to exit, exit code, rusage of argv's process)."""
    if through_cat:
        cat = subprocess.Popen(["cat", path], stdout=subprocess.PIPE)
        stdin = cat.stdout
    else:
        cat = None
        stdin = open(path, "rb")
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=stdin, stdout=stdout, env=env)
    stdin.close()
    _, status, rusage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if cat is not None:
        cat.wait()
    return wall, os.waitstatus_to_exitcode(status), rusage


def run_timed(argv, path, env, through_cat=False, stdout=subprocess.DEVNULL):
    """`run_on_file` under GNU time; returns (wall s, CPU s, max RSS KiB, exit code)."""
    return run_timed_rusage(argv, path, env, through_cat, stdout)[:4]


def run_timed_rusage(argv, path, env, through_cat=False, stdout=subprocess.DEVNULL):
    """`run_timed`, with the rusage of the run (GNU time's and, waited for
    by it, argv's) as a fifth item: its `ru_minflt` counts page faults."""
    timed, out = gnu_timed(argv)
    wall, code, rusage = run_on_file(timed, path, env, through_cat, stdout)
    cpu, rss = read_gnu_time(out)
    return wall, cpu, rss, code, rusage


def summarize(runs):
    """(median wall, median CPU, largest max RSS) of (wall, CPU, RSS) runs."""
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), max(r[2] for r in runs))


def print_run_comment(path, lines):
    """The HTML comment that heads a BENCHMARKS.md table: when, how many
    cores, and the corpus's size."""
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} cores · corpus {os.path.getsize(path) / 1e6:.0f} MB, "
          f"{lines:,} lines -->")


def stdin_to_kafka_config(data_dir, bootstrap, topic, buffer, sink_extra=""):
    """A sluice config reading stdin into one Kafka sink, `kafka`, with the
    API off: `sink_extra` are more lines of [sinks.kafka], `buffer` the body
    of its [sinks.kafka.buffer] table."""
    return f"""
data_dir = "{data_dir}"
[api]
enabled = false
[sources.in]
type = "stdin"
[sinks.kafka]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
{sink_extra}
[sinks.kafka.buffer]
{buffer}
"""
