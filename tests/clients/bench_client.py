"""Load for `cargo xtask bench`: runs and session execs through
`airlock serve`, measured from the client (httpx).

Usage: bench_client.py URL RUNS SECONDS CONCURRENCY
Prints one JSON object: run latency p50/p95 (sequential runs of
print(1)), sustained runs per second (CONCURRENCY clients for SECONDS),
session exec latency p50/p95.
The latency runs are 1.5 s apart, so each finds the warm pool refilled.
"""

import asyncio
import json
import sys
import time

import httpx

URL, RUNS, SECONDS, CONCURRENCY = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
RUN = {"language": "python", "code": "print(1)"}
REFILL_PAUSE_S = 1.5


def percentiles(values):
    v = sorted(values)
    rank = lambda p: v[max(0, -(-len(v) * p // 100) - 1)]  # nearest rank
    return rank(50), rank(95)


def timed(c, method, path, **kw):
    start = time.perf_counter()
    r = c.request(method, path, **kw)
    elapsed = (time.perf_counter() - start) * 1000
    assert r.status_code in (200, 201, 204), (path, r.status_code, r.text)
    return elapsed, r


async def sustained():
    done, failed = 0, 0
    deadline = time.perf_counter() + SECONDS
    async with httpx.AsyncClient(base_url=URL, timeout=300) as c:
        async def worker():
            nonlocal done, failed
            while time.perf_counter() < deadline:
                r = await c.post("/v1/runs", json=RUN)
                if r.status_code == 200 and r.json()["stdout"] == "1\n":
                    done += 1
                else:
                    failed += 1
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - start
    return done / elapsed, failed


def main():
    out = {}
    with httpx.Client(base_url=URL, timeout=300) as c:
        timed(c, "POST", "/v1/runs", json=RUN)  # warm: templates, overlays
        runs = []
        for _ in range(RUNS):
            # A request that finds the warm pool refilled: the pool's
            # refill (a restore and a warm-up, about a second under TCG)
            # runs between requests, as under light load.
            time.sleep(REFILL_PAUSE_S)
            runs.append(timed(c, "POST", "/v1/runs", json=RUN)[0])
        out["run_p50_ms"], out["run_p95_ms"] = percentiles(runs)
        _, r = timed(c, "POST", "/v1/sessions", json={"language": "python"})
        sid = r.json()["id"]
        timed(c, "POST", f"/v1/sessions/{sid}/exec", json={"code": "x = 1"})
        execs = [timed(c, "POST", f"/v1/sessions/{sid}/exec", json={"code": "x += 1"})[0] for _ in range(RUNS)]
        out["exec_p50_ms"], out["exec_p95_ms"] = percentiles(execs)
        timed(c, "DELETE", f"/v1/sessions/{sid}")
    out["runs_per_s"], out["failed"] = asyncio.run(sustained())
    out["concurrency"], out["seconds"] = CONCURRENCY, SECONDS
    print(json.dumps(out))


if __name__ == "__main__":
    main()
