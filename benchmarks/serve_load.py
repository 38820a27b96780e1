"""The served champion under concurrent requests: throughput, latency, errors, memory over time,
and what a client sees when the server's queue is full. Loopback only, bounded in requests and
time; CPU, no downloads.

    python benchmarks/serve_load.py [--phase-s 20] [--max-requests 2000] [--soak-s 600]
        [--out benchmarks/results/serve-load-2core.json]

Fits the TINY preset for one epoch on a generated FairVision and logs it as the pyfunc model
(benchmarks/pyfunc_latency.py tiny_logged_model), then serves it with `mlflow models serve
--env-manager local -h 127.0.0.1` (one uvicorn worker, MULTIFAIR_ALLOWED_ROOT = the generated
data folder) and measures, one patient per request (the generated 64 x 64 SLO + 16 x 64 x 64 OCT):
  1. the idle latency of one request (median of sequential requests, benchmarks/timing.py);
  2. 1, 4 and 16 concurrent clients (threads, one keep-alive connection each), each for
     --phase-s seconds or --max-requests requests, patients sent as npz paths and as arrays:
     requests/s, p50/p95/p99 latency, errors (any answer but 200);
  3. a soak: 4 clients, paths and arrays alternating, for --soak-s seconds: the server's RSS at
     the start, every 30 s, and at the end (goal: flat within 10%), errors;
  4. overload: 32 clients (a connection per request, as curl) sending 16-patient requests, to
     the default server (no limit: the queue grows) and to a second server with
     UVICORN_LIMIT_CONCURRENCY=8 and MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=3: the status codes
     and bodies the clients get.
The clients run in this process, on the same machine as the server: they take CPU from it.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pyfunc_latency import tiny_logged_model  # noqa: E402
from benchmarks.timing import median_s  # noqa: E402

HOST = "127.0.0.1"   # loopback only: the benchmark never binds another address


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`mlflow models serve` of model_uri on a free loopback port, in its own process group."""

    def __init__(self, tracking_uri: str, model_uri: str, allowed_root: Path, log: Path, **env):
        self.port = free_port()
        venv_bin = str(Path(sys.executable).parent)   # uvicorn
        environ = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
                   "MULTIFAIR_ALLOWED_ROOT": str(allowed_root),
                   "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                   "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")]), **env}
        environ.pop("PYTHONPATH", None)   # the model runs its own trainer copy (code_paths)
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
             "local", "-h", HOST, "-p", str(self.port)], env=environ, cwd=log.parent,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while not self.ping():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: see {log}")
            time.sleep(0.5)

    def ping(self) -> bool:
        try:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
            conn.request("GET", "/ping")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def rss_mb(self) -> float:
        """Resident memory of the server and its children (uvicorn is exec'd: one process)."""
        import psutil

        root = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def bodies(root: Path, n: int) -> dict[str, list[bytes]]:
    """One JSON request body per test patient, as npz paths and as arrays (nested lists)."""
    import numpy as np

    from trainer.data import LAYOUTS

    files = sorted(LAYOUTS["fairvision"].split_dir(root, "test").glob("data_*.npz"))[:n]
    as_paths, as_arrays = [], []
    for f in files:
        as_paths.append({"slo": str(f), "oct": str(f)})
        with np.load(f) as z:
            as_arrays.append({"slo": z["slo_fundus"].tolist(), "oct": z["oct_bscans"].tolist()})
    encode = lambda rows: json.dumps({"dataframe_records": rows}).encode()   # noqa: E731
    return {"paths": [encode([r]) for r in as_paths], "arrays": [encode([r]) for r in as_arrays],
            "16 patients as arrays": [encode(as_arrays[:16])],
            "16 patients as paths": [encode(as_paths[:16])]}


def post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    return answer.status, answer.read()


def load(port: int, payloads: list[bytes], clients: int, seconds: float, max_requests: int,
         keep_alive: bool = True, timeout: float = 120) -> dict:
    """`clients` threads posting payloads round-robin until `seconds` pass or `max_requests`
    are sent (keep_alive: one connection per client, else one per request, as curl): latency
    percentiles of every answer, requests/s, status counts, one body per status but 200."""
    import numpy as np

    lock, latencies, statuses, seen = threading.Lock(), [], Counter(), {}
    sent = iter(range(max_requests))
    stop_at = time.perf_counter() + seconds

    def client():
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        for i in sent:   # shared iterator: max_requests in all
            if time.perf_counter() > stop_at:
                break
            started = time.perf_counter()
            try:
                status, body = post(conn, payloads[i % len(payloads)])
            except (OSError, http.client.HTTPException) as exc:
                status, body = type(exc).__name__, b""
            if status != 200 or not keep_alive:
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
            with lock:
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
                if status != 200 and status not in seen:
                    seen[status] = body[:300].decode(errors="replace")
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies or [np.nan]) * 1e3
    return {"clients": clients, "requests": len(latencies), "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": sum(n for s, n in statuses.items() if s != 200),
            "statuses": {str(s): n for s, n in statuses.items()}, "error_bodies": seen}


def soak(server: Server, payloads: list[bytes], seconds: float, max_requests: int) -> dict:
    """4 clients for `seconds`, RSS sampled every 30 s (a background load() in slices)."""
    rss, results, started = [(0.0, server.rss_mb())], [], time.perf_counter()
    while seconds - (time.perf_counter() - started) > 1:
        left = max_requests - sum(r["requests"] for r in results)
        if left <= 0:
            break
        results.append(load(server.port, payloads, 4, min(30, seconds - (time.perf_counter() - started)), left))
        rss.append((round(time.perf_counter() - started, 1), round(server.rss_mb(), 1)))
    requests = sum(r["requests"] for r in results)
    return {"clients": 4, "seconds": round(time.perf_counter() - started, 1), "requests": requests,
            "requests_per_s": round(requests / (time.perf_counter() - started), 2),
            "errors": sum(r["errors"] for r in results),
            "p99_ms_per_slice": [r["p99_ms"] for r in results],
            "rss_mb": rss, "rss_start_mb": rss[0][1], "rss_end_mb": rss[-1][1],
            "rss_change": round(rss[-1][1] / rss[0][1] - 1, 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase-s", type=float, default=20, help="seconds per (clients, payload)")
    ap.add_argument("--max-requests", type=int, default=2000, help="per phase, at most")
    ap.add_argument("--soak-s", type=float, default=600)
    ap.add_argument("--out", default="", help="JSON file for the raw figures")
    a = ap.parse_args(argv)
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_average_start": os.getloadavg(),
                       "note": "clients and server on the same machine; shared with other jobs"},
           "settings": vars(a)}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        tmp = Path(tmp)
        tracking_uri, model_uri, root = tiny_logged_model(tmp, n_test=48)
        payloads = bodies(root, 48)
        server = Server(tracking_uri, model_uri, root, tmp / "serve.log")
        try:
            out["rss_mb_after_start"] = round(server.rss_mb(), 1)
            conn = http.client.HTTPConnection(HOST, server.port, timeout=120)
            for kind in ("paths", "arrays"):
                assert post(conn, payloads[kind][0])[0] == 200, kind
                out[f"idle_latency_ms_{kind}"] = round(
                    median_s(lambda: post(conn, payloads[kind][0]), 20) * 1e3, 1)
            out["phases"] = [{"payload": kind, **load(server.port, payloads[kind], clients,
                                                      a.phase_s, a.max_requests)}
                             for clients in (1, 4, 16) for kind in ("paths", "arrays")]
            for p in out["phases"]:
                print(json.dumps(p), flush=True)
            mixed = [b for pair in zip(payloads["paths"], payloads["arrays"]) for b in pair]
            out["soak"] = soak(server, mixed, a.soak_s, 10**7)
            print(json.dumps(out["soak"]), flush=True)
            # overload with the default settings: no limit, requests wait in the server's queue
            out["overload_default"] = {"server_env": {}, "payload": "16 patients as arrays", **load(
                server.port, payloads["16 patients as arrays"], 32, a.phase_s, a.max_requests,
                keep_alive=False)}
            print(json.dumps(out["overload_default"]), flush=True)
        finally:
            server.stop()
        queue_env = {"UVICORN_LIMIT_CONCURRENCY": "8", "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "3"}
        full = Server(tracking_uri, model_uri, root, tmp / "serve-full.log", **queue_env)
        try:
            out["queue_full"] = [{"server_env": queue_env, "payload": kind,
                                  **load(full.port, payloads[kind], 32, a.phase_s,
                                         a.max_requests, keep_alive=False)}
                                 for kind in ("16 patients as arrays", "16 patients as paths")]
            print(json.dumps(out["queue_full"]), flush=True)
        finally:
            full.stop()
    out["machine"]["load_average_end"] = os.getloadavg()
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
