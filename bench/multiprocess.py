"""One process against several: `erase sample` and `erase unlearn` (siss) throughput under accelerate launch.

The same command runs as one process (all CPU threads) and as N processes (`accelerate launch --multi_gpu
--num_processes N`, threads split evenly; gloo on CPUs, one GPU each on a multi-GPU machine). Wall time
includes process start and model loading, so the figures are what a user waits for; the training line
also reports the in-loop seconds from the run's own summary. JSON lines to stdout.

    python -m bench.multiprocess [--processes 2] [--images 64] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], processes: int, threads: int) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    if processes == 1:
        cmd = [sys.executable, "-m", "erasecli", *args]
    else:
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_port()), "-m", "erasecli", *args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.strip()[-800:]}")
    return secs, p


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.multiprocess")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--images", type=int, default=32, help="Images sampled (16 prompts x images/16).")
    ap.add_argument("--steps", type=int, default=40, help="siss training steps.")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="erasecli-mp-"))
    cores = os.cpu_count() or 1
    prompts = sum([["--prompt", f"a {c} handwritten digit {d}"] for c in ("red", "blue", "green", "white")
                   for d in ("one", "four", "six", "nine")], [])
    n = max(1, a.images // 16)
    sample = ["sample", *prompts, "-n", str(n), "--steps", "25"]
    train = ["unlearn", "--concept", "digit 3", "--steps", str(a.steps), "--json"]
    os.environ["ERASECLI_CACHE"] = str(work / "cache")
    run([*train[:-1], "--steps", "1", "--out", str(work / "warm")], 1, cores)  # fill the training-data cache
    for procs in (1, a.processes):
        threads = max(1, cores // procs)
        secs, _ = run([*sample, "--out", str(work / f"s{procs}")], procs, threads)
        emit("multiprocess", "sample_images_per_second", round(16 * n / secs, 2), "images/s", processes=procs,
             threads_per_process=threads, images=16 * n, wall_seconds=round(secs, 2), steps=25,
             note="wall time of the whole command: start, model load, sampling, writing")
        secs, p = run([*train, "--out", str(work / f"u{procs}"), "--overwrite"], procs, threads)
        summary = json.loads(p.stdout)["summary"]
        emit("multiprocess", "siss_train_seconds", summary["train_seconds"], "s", processes=procs,
             threads_per_process=threads, steps=a.steps, batch_size=16, wall_seconds=round(secs, 2),
             steps_per_second=round(a.steps / summary["train_seconds"], 3))


if __name__ == "__main__":
    main()
