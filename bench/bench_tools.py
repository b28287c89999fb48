"""The OpenAI-compatible server under load, on loopback.

1. Bursts: N concurrent clients (more than the queue holds) each send requests back to back
   without retrying, to a server over a ScriptedBackend whose "model" takes a fixed time. Every
   request must end in 200 or 429 (none lost, none hung); RSS is sampled between rounds to show
   memory stays flat.
2. Retrying clients that honour Retry-After all finish.
3. Slow and half-open clients: with 300 half-header sockets (from 127.0.0.2) and 50 bodies
   stopped short of their Content-Length (from 127.0.0.3) held open against the server's default
   ``ConnectionLimits``, a legitimate client on 127.0.0.1 is timed against its own baseline; the
   half-header sockets must be closed at the head timeout.
4. Per-request overhead of the server (HTTP + JSON + PNG/base64) over the tiny checkpoint:
   the same call through the ``openai`` client vs directly on the backend.

Run with ``python -m bench.bench_tools [--quick]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import select
import socket
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
        for j in range(per_client):
            t = time.perf_counter()
            while True:
                try:
                    r = c.post(url + "/v1/images/generations", json={"prompt": f"c{i} r{j}"})
                    code = r.status_code
                except httpx.HTTPError:
                    code = "error"
                if code == 429 and "retry-after" not in r.headers:
                    code = "429 without Retry-After"
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
            "other": sum(1 for c, _ in results if c not in (200, 429)),
            "5xx": sum(1 for c, _ in results if isinstance(c, int) and c >= 500), "wall_s": round(wall, 2),
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
        slow = bench_slow_clients(url)
    finally:
        p.stdin.close()
        p.wait(20)
    return {"model_ms": model_s * 1000, "queue_size": queue, "bursts": bursts, "retrying": retry,
            "rounds": rounds, "requests_per_round": 4 * sum(levels),
            "rss_mb_per_round": [round(x, 1) for x in rss], "rss_growth_after_first_round_mb": round(rss[-1] - rss[0], 1),
            "worker": stats, "slow_clients": slow}


def _latencies(url: str, n: int) -> dict:
    """``n`` image requests one after another from 127.0.0.1 (one keep-alive connection)."""
    out = []
    with httpx.Client(timeout=30) as c:
        for i in range(n):
            t = time.perf_counter()
            r = c.post(url + "/v1/images/generations", json={"prompt": f"legit {i}"})
            out.append((r.status_code, time.perf_counter() - t))
    ok = sorted(s for code, s in out if code == 200)
    return {"ok": len(ok), "requests": n, "p50_ms": round(1000 * statistics.median(ok), 1) if ok else None,
            "max_ms": round(1000 * ok[-1], 1) if ok else None}


def _attack(port: int, source: str, n: int, payload: bytes) -> list:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(payload)
        socks.append(s)
    return socks


def _open_after(socks: list, seconds: float) -> tuple[list, float]:
    """Wait until the server has closed every socket or ``seconds`` passed; (still open, seconds)."""
    t0, left = time.monotonic(), set(socks)
    while left and time.monotonic() - t0 < seconds:
        ready, _, _ = select.select(list(left), [], [], 0.2)
        for s in ready:
            try:
                gone = not s.recv(65536)
            except OSError:
                gone = True
            if gone:
                left.discard(s)
    return list(left), time.monotonic() - t0


def bench_slow_clients(url: str, half_open: int = 300, short_bodies: int = 50) -> dict:
    """A legit client's latency alone, then while slow clients hold sockets (server defaults)."""
    from lladauni.tools.http_limits import ConnectionLimits

    limits, port = ConnectionLimits(), int(url.rsplit(":", 1)[1])
    alone = _latencies(url, 20)
    t0 = time.monotonic()
    try:
        heads = _attack(port, "127.0.0.2", half_open, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-")
        bodies = _attack(port, "127.0.0.3", short_bodies, b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":")
    except OSError as exc:  # not Linux: no 127.0.0.2 to connect from
        return {"skipped": str(exc)}
    refused = half_open - len(_open_after(heads, 0.5)[0])
    attacked = _latencies(url, 20)
    held, _ = _open_after(heads, limits.header_timeout_s + 5)
    closed_after = time.monotonic() - t0
    for s in heads + bodies:
        s.close()
    return {"half_open": half_open, "short_bodies": short_bodies, "refused_at_once": refused, "alone": alone,
            "attacked": attacked, "header_timeout_s": limits.header_timeout_s, "still_open": len(held),
            "all_closed_after_s": round(closed_after, 1)}


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
    lines += ["", f"5xx in all bursts: {sum(b['5xx'] for b in load['bursts'])}; every 429 carried Retry-After "
              "(one without it counts as other/lost)."]
    r = load["retrying"]
    lines += [
        "",
        f"Retrying clients (honour Retry-After): {r['clients']} clients x 2 → {r['ok']}/{r['requests']} succeeded, "
        f"{r['other']} other, wall {r['wall_s']} s.",
        f"Server RSS after each round of {load['requests_per_round']} requests (MiB): {load['rss_mb_per_round']} (growth after the first round: "
        f"{load['rss_growth_after_first_round_mb']} MiB). Worker: {load['worker']}.",
        "",
        *_slow_lines(load["slow_clients"]),
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


def _slow_lines(sc: dict) -> list:
    if "skipped" in sc:
        return [f"Slow clients: skipped ({sc['skipped']})."]
    a, b = sc["alone"], sc["attacked"]
    return [f"Slow clients (server defaults): {sc['half_open']} half-header sockets from 127.0.0.2 "
            f"({sc['refused_at_once']} refused at once by the per-client cap) and {sc['short_bodies']} bodies "
            "stopped short from 127.0.0.3, held open while a client on 127.0.0.1 sends 20 image requests:",
            "",
            "| legit client | 200 | p50 ms | max ms |",
            "|---|---|---|---|",
            f"| alone | {a['ok']}/{a['requests']} | {a['p50_ms']} | {a['max_ms']} |",
            f"| during the attack | {b['ok']}/{b['requests']} | {b['p50_ms']} | {b['max_ms']} |",
            "",
            f"Half-header sockets still open {sc['all_closed_after_s']} s after the attack began (head timeout "
            f"{sc['header_timeout_s']:g} s): {sc['still_open']}."]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    _, md = run(p.parse_args(argv).quick)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
