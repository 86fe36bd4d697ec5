"""Throughput and latency of the Triton repositories vs the bare runtime (CPU, local server).

    PYTHONPATH=. python scripts/bench_triton.py --engine engines/digits.onnx --out bench_triton.json

Starts the nvidia-pytriton wheel's tritonserver on a repository with both samplers
(bls: the U-Net as a Python-backend model running the project's ONNX runner, called
once per step through BLS; inprocess: the loop and the engine in one Python model),
then sends one-image requests from C concurrent HTTP clients (C = 1, 4, 16) and times
each. 'bare' is runtime.load(engine).sample(1, seed) from C threads in this process.
On a shared machine, rounds interleave the modes (the order rotates each round) so that
load from elsewhere falls on all of them; images/s is the median over rounds (with the
min-max spread), latencies are pooled over rounds. Prints a Markdown table; --out also
writes the raw numbers as JSON (after every measurement, so a cut-short run keeps its rows).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import runtime
from ddpm_export.serving.local_server import LocalTritonServer
from ddpm_export.serving.triton_repo import RepositoryConfig, write_repository

SETTINGS = {"ddim20": ("ddim", 20), "ddpm1000": ("ddpm", 1000)}


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run_clients(call, concurrency, requests):
    """call(seed) in `concurrency` threads until `requests` calls are done; latencies + wall time."""
    lat, lock, seeds = [], threading.Lock(), iter(range(requests))

    def worker():
        while True:
            with lock:
                seed = next(seeds, None)
            if seed is None:
                return
            t0 = time.perf_counter()
            call(seed)
            with lock:
                lat.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.perf_counter() - t0


def triton_caller(url, model, method, steps):
    import tritonclient.http as http

    local = threading.local()

    def call(seed):
        if not hasattr(local, "c"):
            local.c = http.InferenceServerClient(url, network_timeout=3600, connection_timeout=60)
        ins = []
        for name, arr, dt in (("num", np.array([1], np.int32), "INT32"),
                              ("seed", np.array([seed], np.int64), "INT64"),
                              ("method", np.array([method.encode()], object), "BYTES"),
                              ("steps", np.array([steps], np.int32), "INT32")):
            i = http.InferInput(name, [1], dt)
            i.set_data_from_numpy(arr)
            ins.append(i)
        out = local.c.infer(model, ins).as_numpy("images")
        assert out.shape[0] == 1
    return call


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="engines/digits.onnx")
    ap.add_argument("--instances", type=int, default=2, help="model instances per model")
    ap.add_argument("--bls-sampler-instances", type=int, default=None,
                    help="bls sampler instances (default --instances); more give larger U-Net batches")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--settings", default="ddim20,ddpm1000")
    ap.add_argument("--requests", default="ddim20=32,ddpm1000=4",
                    help="requests per (setting, concurrency); at least the concurrency")
    ap.add_argument("--modes", default="bare,inprocess,bls")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    ap.add_argument("--bare-threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads for 'bare' (default: ONNX Runtime's)")
    ap.add_argument("--out", default=None, help="JSON file for the raw numbers")
    a = ap.parse_args(argv)
    conc = [int(c) for c in a.concurrency.split(",")]
    reqs = dict((k, int(v)) for k, v in (kv.split("=") for kv in a.requests.split(",")))
    modes = a.modes.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_repository(RepositoryConfig(engine=a.engine, out=str(tmp / "repo"), mode="bls", name="unet",
                                          unet_backend="python", instances=a.instances,
                                          sampler_instances=a.bls_sampler_instances))
        write_repository(RepositoryConfig(engine=a.engine, out=str(tmp / "ip"), mode="inprocess", name="ip",
                                          instances=a.instances))
        (tmp / "ip" / "ip_sampler").rename(tmp / "repo" / "ip_sampler")
        with LocalTritonServer(tmp / "repo", exit_timeout=5, log_path=tmp / "server.log") as server, \
                runtime.load(a.engine, threads=a.bare_threads) as engine:
            engine.sample(1, seed=0, method="ddim", steps=2)  # warm-up
            for model in ("unet_sampler", "ip_sampler"):
                triton_caller(server.http_url, model, "ddim", 2)(0)
            for setting in a.settings.split(","):
                method, steps = SETTINGS[setting]
                for c in conc:
                    n = max(c, reqs[setting])
                    lat = {m: [] for m in modes}
                    ips = {m: [] for m in modes}
                    for rnd in range(a.rounds):
                        for mode in modes[rnd % len(modes):] + modes[:rnd % len(modes)]:
                            if mode == "bare":
                                call = lambda seed: engine.sample(1, seed=seed, method=method, steps=steps)  # noqa: E731
                            else:
                                model = "unet_sampler" if mode == "bls" else "ip_sampler"
                                call = triton_caller(server.http_url, model, method, steps)
                            ls, wall = run_clients(call, c, n)
                            lat[mode] += ls
                            ips[mode].append(n / wall)
                    for mode in modes:
                        row = {"setting": setting, "mode": mode, "concurrency": c, "requests": n,
                               "bare_threads": a.bare_threads,
                               "rounds": a.rounds, "images_per_s": statistics.median(ips[mode]),
                               "images_per_s_min": min(ips[mode]), "images_per_s_max": max(ips[mode]),
                               "p50_s": _pct(lat[mode], 50), "p95_s": _pct(lat[mode], 95),
                               "per_step_ms": 1000 * _pct(lat[mode], 50) / steps}
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        if a.out:
                            Path(a.out).write_text(json.dumps(
                                {"rows": rows, "instances": a.instances, "engine": a.engine,
                                 "bls_sampler_instances": a.bls_sampler_instances}, indent=2))
    print(table(rows))


def table(rows):
    """The Markdown table of rows (as written to --out)."""
    out = ["| setting | clients | requests x rounds | mode | images/s (min-max) | p50 (s) | p95 (s) | ms/step (p50) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['setting']} | {r['concurrency']} | {r['requests']} x {r['rounds']} | {r['mode']} | "
                   f"{r['images_per_s']:.3g} ({r['images_per_s_min']:.3g}-{r['images_per_s_max']:.3g}) | "
                   f"{r['p50_s']:.3g} | {r['p95_s']:.3g} | {r['per_step_ms']:.3g} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
