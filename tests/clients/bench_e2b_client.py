"""Load for `cargo xtask bench --only e2b`: E2B's Python SDK
(`e2b-code-interpreter`, unchanged) against `airlock serve --e2b-listen`
with a warm pool of python-data VMs, measured from the client.

Usage: bench_e2b_client.py E2B_URL CREATES EXECS
Prints one JSON object: the wall times (ms) of CREATES rounds of
`Sandbox.create()` + `run_code("1+1")` (each round kills its sandbox,
then waits for the pool to refill before the next), and of EXECS
`run_code("1+1")` in one live sandbox.
"""

import json
import os
import sys
import time

from clean_exit import exit_ok

URL, CREATES, EXECS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.environ["E2B_API_URL"] = URL
os.environ["E2B_SANDBOX_URL"] = URL
# Keyless server on loopback: any key acts for the local user; this one
# has the form older SDK releases check.
os.environ.setdefault("E2B_API_KEY", "e2b_" + "0" * 40)

from e2b_code_interpreter import Sandbox  # noqa: E402

# The pool's refill after a take (a restore and a warm-up of a
# python-data VM under TCG) runs between rounds, as under light load.
REFILL_PAUSE_S = 4.0


def create_and_run():
    start = time.perf_counter()
    sbx = Sandbox.create()
    two = sbx.run_code("1+1")
    elapsed = (time.perf_counter() - start) * 1000
    assert two.text == "2", two
    return elapsed, sbx


def main():
    # Unmeasured: builds a missing python-data template and fills the pool.
    _, sbx = create_and_run()
    sbx.kill()
    creates = []
    for _ in range(CREATES):
        time.sleep(REFILL_PAUSE_S)
        elapsed, sbx = create_and_run()
        sbx.kill()
        creates.append(elapsed)
    sbx = Sandbox.create()
    try:
        sbx.run_code("1+1")  # the first cell of a sandbox is not the steady state
        execs = []
        for _ in range(EXECS):
            start = time.perf_counter()
            two = sbx.run_code("1+1")
            execs.append((time.perf_counter() - start) * 1000)
            assert two.text == "2", two
    finally:
        sbx.kill()
    print(json.dumps({"create_ms": creates, "exec_ms": execs}))


if __name__ == "__main__":
    main()
    exit_ok()
