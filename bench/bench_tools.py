"""The OpenAI-compatible server under load, on loopback.

1. Bursts: N concurrent clients (more than the queue holds) each send requests back to back
   without retrying, to a server over a ScriptedBackend whose "model" takes a fixed time. Every
   request must end in 200 or 429 (none lost, none hung); RSS is sampled between rounds to show
   memory stays flat.
2. Retrying clients that honour Retry-After all finish.
3. Per-request overhead of the server (HTTP + JSON + PNG/base64) over the tiny checkpoint:
   the same call through the ``openai`` client vs directly on the backend.

Run with ``python -m bench.bench_tools [--quick]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from lladauni.agent import LocalBackend
from lladauni.agent.context import TINY_OPTIONS
from lladauni.tools.service import ToolService


def _running(svc):
    from lladauni.tools.server import serve_in_thread

    return serve_in_thread(svc)


def _burst(url: str, clients: int, per_client: int, retry: bool) -> dict:
    # one shared connection pool: a fresh httpx.Client per thread builds an SSL context each time,
    # whose native memory would show up as (client-side) RSS growth
    c = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=clients, max_keepalive_connections=clients))

    def client(i: int) -> list:
        out = []
        if True:
            for j in range(per_client):
                t = time.perf_counter()
                while True:
                    try:
                        r = c.post(url + "/v1/images/generations", json={"prompt": f"c{i} r{j}"})
                        code = r.status_code
                    except httpx.HTTPError:
                        code = "error"
                    if code == 429 and retry:
                        time.sleep(min(float(r.headers["retry-after"]), 0.5))
                        continue
                    break
                out.append((code, time.perf_counter() - t))
        return out

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [x for xs in pool.map(client, range(clients)) for x in xs]
    c.close()
    wall = time.perf_counter() - t0
    ok = [s for c, s in results if c == 200]
    return {"clients": clients, "requests": len(results), "ok": len(ok),
            "rejected_429": sum(1 for c, _ in results if c == 429),
            "other": sum(1 for c, _ in results if c not in (200, 429)), "wall_s": round(wall, 2),
            "ok_per_s": round(len(ok) / wall, 1),
            "p50_ms": round(1000 * statistics.median(ok), 1) if ok else None,
            "p95_ms": round(1000 * sorted(ok)[int(0.95 * (len(ok) - 1))], 1) if ok else None}


_SERVER = """
import sys, tempfile
from pathlib import Path
from lladauni.agent import ScriptedBackend
from lladauni.tools.runtime import Limits
from lladauni.tools.service import ToolService
from lladauni.tools.server import serve_in_thread
svc = ToolService(ScriptedBackend(size=64, delay={"generate_image": %r}), limits=Limits(queue_size=%d, timeout_s=30),
                  out_dir=Path(tempfile.mkdtemp()))
with serve_in_thread(svc) as url:
    print(url, flush=True)
    sys.stdin.read()
"""


def bench_load(quick: bool, model_s: float = 0.05, queue: int = 4) -> dict:
    """The server runs in its own process, so its RSS is not mixed with the client threads'."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    p = subprocess.Popen([sys.executable, "-c", _SERVER % (model_s, queue)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=env, cwd=root)
    try:
        url = p.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError("the bench server did not start")
        server = psutil.Process(p.pid)
        levels = [8, 32] if quick else [8, 32, 64]
        rounds = 4 if quick else 10
        bursts, rss = [], []
        for r in range(rounds):
            for n in levels:
                res = _burst(url, n, 4, retry=False)
                if r == 0:
                    bursts.append(res)
            rss.append(server.memory_info().rss / 2**20)
        retry = _burst(url, 16, 2, retry=True)
        stats = httpx.get(url + "/health").json()["queue"]
    finally:
        p.stdin.close()
        p.wait(20)
    return {"model_ms": model_s * 1000, "queue_size": queue, "bursts": bursts, "retrying": retry,
            "rounds": rounds, "requests_per_round": 4 * sum(levels),
            "rss_mb_per_round": [round(x, 1) for x in rss], "rss_growth_after_first_round_mb": round(rss[-1] - rss[0], 1),
            "worker": stats}


def bench_overhead(quick: bool) -> dict:
    import openai

    from lladauni.model_core.testing import make_tiny_checkpoint

    repeats = 5 if quick else 20
    with tempfile.TemporaryDirectory() as d:
        backend = LocalBackend(make_tiny_checkpoint(Path(d) / "ckpt", seed=0), device="cpu")
        backend.load()
        svc = ToolService(backend, out_dir=Path(d) / "out", defaults=TINY_OPTIONS)
        ig = {"dllm_steps": 2, "decoder_steps": 2, "image_h": 256, "image_w": 256, "seed": 0}
        out = {}
        with _running(svc) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            cases = {
                "chat (32 tokens)": (lambda: client.chat.completions.create(
                    model=svc.model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=32,
                    extra_body={"image_generation": {"dllm_steps": 2}}),
                    lambda: svc.worker.run_sync(lambda b: b.chat("hi", steps=2, gen_length=32))),
                "image 256² (b64 PNG)": (lambda: client.images.generate(prompt="a fox", extra_body={"image_generation": ig}),
                                         lambda: svc.worker.run_sync(lambda b: b.generate_image(
                                             "a fox", steps=2, decoder_steps=2, image_h=256, image_w=256, seed=0))),
            }
            for name, (via_http, direct) in cases.items():
                via_http(), direct()  # warm-up
                h, l = [], []
                for _ in range(repeats):
                    t = time.perf_counter(); via_http(); h.append(time.perf_counter() - t)
                    t = time.perf_counter(); direct(); l.append(time.perf_counter() - t)
                out[name] = {"http_ms": round(1000 * statistics.median(h), 1), "direct_ms": round(1000 * statistics.median(l), 1),
                             "overhead_ms": round(1000 * (statistics.median(h) - statistics.median(l)), 1)}
            client.close()
        svc.worker.close()
    return out


def run(quick: bool) -> tuple[dict, str]:
    load = bench_load(quick)
    over = bench_overhead(quick)
    lines = [
        "## Tools: the OpenAI-compatible server under load",
        "",
        f"Loopback; the server in its own process, clients as threads of the bench. ScriptedBackend whose image call takes "
        f"{load['model_ms']:.0f} ms, queue size {load['queue_size']} (+1 running); each client sends 4 "
        "requests back to back and does not retry. Every request must end in 200 or 429.",
        "",
        "| clients | requests | 200 | 429 | other/lost | wall s | 200/s | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in load["bursts"]:
        lines.append(f"| {b['clients']} | {b['requests']} | {b['ok']} | {b['rejected_429']} | {b['other']} | {b['wall_s']} | "
                     f"{b['ok_per_s']} | {b['p50_ms']} | {b['p95_ms']} |")
    r = load["retrying"]
    lines += [
        "",
        f"Retrying clients (honour Retry-After): {r['clients']} clients x 2 → {r['ok']}/{r['requests']} succeeded, "
        f"{r['other']} other, wall {r['wall_s']} s.",
        f"Server RSS after each round of {load['requests_per_round']} requests (MiB): {load['rss_mb_per_round']} (growth after the first round: "
        f"{load['rss_growth_after_first_round_mb']} MiB). Worker: {load['worker']}.",
        "",
        "Server overhead on the tiny checkpoint (CPU, 2 cores): the `openai` client → HTTP → server → model vs the same "
        "backend call submitted to the server's model thread directly (so the difference is HTTP, JSON, PNG and base64); "
        "medians, calls alternating:",
        "",
        "| call | via HTTP ms | direct ms | overhead ms |",
        "|---|---|---|---|",
    ]
    for name, o in over.items():
        lines.append(f"| {name} | {o['http_ms']} | {o['direct_ms']} | {o['overhead_ms']} |")
    lines.append("")
    return {"load": load, "overhead": over}, "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    _, md = run(p.parse_args(argv).quick)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
