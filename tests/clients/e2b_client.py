"""E2B's official Python SDK (`e2b-code-interpreter`, unchanged) against
`airlock serve --e2b-listen`, in either routing mode (tests/e2b_e2e.rs):

- `headers URL`: E2B_API_URL and E2B_SANDBOX_URL both name the E2B
  listener (plain HTTP; the sandbox is named in headers);
- `domain DOMAIN`: only E2B_DOMAIN is set (`localhost:PORT`), so the SDK
  builds `https://api.DOMAIN` and `https://<port>-<id>.DOMAIN` and checks
  the listener's certificates against SSL_CERT_FILE (the local CA's
  `ca.pem`, set by the test).

Usage: e2b_client.py headers URL KEY_OF_ALICE KEY_OF_BOB
       e2b_client.py domain DOMAIN KEY_OF_ALICE KEY_OF_BOB
"""

import asyncio
import base64
import os
import sys
import time

from clean_exit import exit_ok

MODE, WHERE, KEY_A, KEY_B = sys.argv[1:5]
for name in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DOMAIN"):
    os.environ.pop(name, None)
if MODE == "headers":
    os.environ["E2B_API_URL"] = WHERE
    os.environ["E2B_SANDBOX_URL"] = WHERE
elif MODE == "domain":
    assert os.environ.get("SSL_CERT_FILE"), "domain mode needs SSL_CERT_FILE"
    os.environ["E2B_DOMAIN"] = WHERE
else:
    sys.exit(f"unknown mode {MODE!r}: headers or domain")
os.environ["E2B_API_KEY"] = KEY_A

from e2b import (  # noqa: E402
    CommandExitException,
    SandboxNotFoundException,
    TimeoutException,
)
from e2b_code_interpreter import AsyncSandbox, Sandbox  # noqa: E402

CHART = """import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [1, 4, 9])
plt.show()"""


def check_sync():
    sbx = Sandbox.create(timeout=600)
    try:
        first = sbx.run_code("x = 1")
        assert first.error is None, first.error
        second = sbx.run_code("x + 1")
        assert second.text == "2", second
        chart = sbx.run_code(CHART)
        assert chart.error is None, chart.error
        png = base64.b64decode(chart.results[0].png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:16]
        error = sbx.run_code("y_undefined")
        assert error.error is not None and error.error.name == "NameError", error
        hi = sbx.commands.run("echo hi")
        assert hi.stdout == "hi\n" and hi.exit_code == 0, hi
        info = sbx.files.write("/home/user/a.txt", "hello")
        assert info.path == "/home/user/a.txt", info
        assert sbx.files.read("/home/user/a.txt") == "hello"
        names = [entry.name for entry in sbx.files.list("/home/user")]
        assert "a.txt" in names, names
        assert sbx.files.exists("/home/user/a.txt")
        assert not sbx.files.exists("/home/user/nope.txt")
        assert sbx.files.get_info("/home/user/a.txt").size == 5
        assert sbx.files.make_dir("/home/user/d") is True
        assert sbx.files.make_dir("/home/user/d") is False
        moved = sbx.files.rename("/home/user/a.txt", "/home/user/d/b.txt")
        assert moved.path == "/home/user/d/b.txt", moved
        deep = [e.path for e in sbx.files.list("/home/user", depth=2)]
        assert "/home/user/d/b.txt" in deep, deep
        where = sbx.commands.run("pwd; cat b.txt; echo $K", cwd="/home/user/d", envs={"K": "V"})
        assert where.stdout == "/home/sandbox/d\nhelloV\n", where
        sbx.files.remove("/home/user/d")
        assert not sbx.files.exists("/home/user/d")
        # A background command: its output reaches wait()'s callbacks (the
        # sync SDK calls them there), in order.
        lines = []
        counting = sbx.commands.run(
            "for i in 1 2 3; do echo $i; sleep 0.2; done", background=True
        )
        assert counting.pid, counting
        done = counting.wait(on_stdout=lines.append)
        assert "".join(lines) == "1\n2\n3\n", lines
        assert done.exit_code == 0, done
        # A command that reads what the client writes to its stdin.
        reader = sbx.commands.run("cat; echo end", background=True, stdin=True)
        sbx.commands.send_stdin(reader.pid, "fed through stdin\n")
        sbx.commands.close_stdin(reader.pid)
        fed = reader.wait()
        assert fed.stdout == "fed through stdin\nend\n", fed
        # One that runs on until it is killed: the sandbox does other work
        # meanwhile, and a second client follows it (commands.connect).
        ticker = sbx.commands.run(
            "for i in $(seq 1 600); do echo tick $i; sleep 0.1; done", background=True
        )
        assert ticker.pid in [p.pid for p in sbx.commands.list()]
        beside = sbx.run_code("x + 10")
        assert beside.text == "11", beside
        assert sbx.commands.run("echo beside").stdout == "beside\n"
        follower = sbx.commands.connect(ticker.pid)
        time.sleep(1)
        assert sbx.commands.kill(ticker.pid) is True
        followed = []
        for handle in (ticker, follower):
            try:
                handle.wait(on_stdout=followed.append)
                raise AssertionError("a killed command ended well")
            except CommandExitException as e:
                assert e.exit_code == -1, e
        assert "tick" in "".join(followed), followed
        assert ticker.pid not in [p.pid for p in sbx.commands.list()]
        # A cell past the client's timeout raises the SDK's timeout; the
        # server interrupts it and the interpreter keeps its state.
        try:
            sbx.run_code("import time\ntime.sleep(60)", timeout=3)
            raise AssertionError("no timeout")
        except TimeoutException:
            pass
        still = sbx.run_code("x")
        assert still.text == "1", still
        # Another tenant's key: not found, and kill says there was none.
        try:
            Sandbox.connect(sbx.sandbox_id, api_key=KEY_B)
            raise AssertionError("another tenant connected")
        except SandboxNotFoundException:
            pass
        assert Sandbox.kill(sbx.sandbox_id, api_key=KEY_B) is False
        assert sbx.is_running()
        # Paused to disk, then resumed by a connect: the interpreter's
        # state and the files come back (docs/persistence.md).
        sbx.files.write("/home/user/kept.txt", "kept")
        assert sbx.pause() is True
        assert str(Sandbox.get_info(sbx.sandbox_id).state) == "paused"
        assert sbx.pause() is False, "paused already"
        resumed = Sandbox.connect(sbx.sandbox_id)
        assert resumed.run_code("x").text == "1"
        assert resumed.files.read("/home/user/kept.txt") == "kept"
        assert str(Sandbox.get_info(sbx.sandbox_id).state) == "running"
    finally:
        killed = sbx.kill()
    assert killed is True, killed
    assert not sbx.is_running()
    if MODE == "domain":
        host = sbx.connection_config.get_sandbox_url(sbx.sandbox_id, sbx.sandbox_domain, 49999)
        assert host.startswith("https://49999-"), host
    print(f"sync ({MODE}): ok")


async def check_async():
    sbx = await AsyncSandbox.create(timeout=600)
    try:
        await sbx.run_code("x = 40")
        two = await sbx.run_code("x + 2")
        assert two.text == "42", two
        out = await sbx.commands.run("echo async")
        assert out.stdout == "async\n", out
    finally:
        await sbx.kill()
    print(f"async ({MODE}): ok")


def main():
    check_sync()
    asyncio.run(check_async())
    exit_ok()


main()
