"""REST checks of `airlock serve` with the `httpx` package (a client this
project did not write).

Environment: AIRLOCK_URL; AIRLOCK_KEY_A and AIRLOCK_KEY_B (two tenants);
AIRLOCK_KEY_LIMITED (a tenant with requests_per_minute = 4 and
memory_mib = 256); AIRLOCK_MAX_BODY (the server's max_body_bytes);
AIRLOCK_CONCURRENT (runs to start at once).

Prints one `ok ...` line per check; any failure raises.
"""

import asyncio
import base64
import hashlib
import json
import os

import httpx

URL = os.environ["AIRLOCK_URL"]
KEY_A = os.environ["AIRLOCK_KEY_A"]
KEY_B = os.environ["AIRLOCK_KEY_B"]
KEY_LIMITED = os.environ["AIRLOCK_KEY_LIMITED"]
MAX_BODY = int(os.environ["AIRLOCK_MAX_BODY"])
CONCURRENT = int(os.environ.get("AIRLOCK_CONCURRENT", "20"))
TIMEOUT = httpx.Timeout(300.0)


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def expect_error(response, status, kind):
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error"]["kind"] == kind, body
    assert body["error"]["message"], body


def sse_events(response):
    """(event, data) pairs of a text/event-stream response."""
    events, name, data = [], None, []
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line == "":
            if name or data:
                events.append((name, "\n".join(data)))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].lstrip(" "))
    return events


def open_routes(c):
    health = c.get("/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    doc = c.get("/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1") and "/v1/runs" in doc["paths"], doc.keys()
    metrics = c.get("/metrics")
    assert metrics.status_code == 200 and "airlock_vms_live" in metrics.text
    print("ok health, openapi and metrics answer without a key")


def refusals(c):
    body = {"language": "python", "code": "print(1)"}
    expect_error(c.post("/v1/runs", json=body), 401, "unauthorized")
    expect_error(c.post("/v1/runs", json=body, headers=auth("airlock_nope")), 401, "unauthorized")
    expect_error(c.post("/v1/runs", json=body, headers={"Authorization": "Basic eDp5"}), 401, "unauthorized")
    print("ok missing, unknown and non-bearer keys get 401")
    expect_error(c.get("/v1/nothing", headers=auth(KEY_A)), 404, "not_found")
    print("ok an unknown route gets 404 JSON")
    bad = c.post("/v1/runs", content=b'{"language": "python", "code": ', headers=auth(KEY_A))
    expect_error(bad, 400, "invalid_input")
    expect_error(c.post("/v1/runs", json={"language": "cobol", "code": "1"}, headers=auth(KEY_A)), 400, "invalid_input")
    expect_error(c.post("/v1/runs", json={"language": "python", "code": "1", "bogus": 1}, headers=auth(KEY_A)), 400, "invalid_input")
    print("ok malformed JSON, a bad language and an unknown field get 400")
    big = {"language": "python", "code": "#" + "x" * MAX_BODY}
    expect_error(c.post("/v1/runs", json=big, headers=auth(KEY_A)), 413, "body_too_large")
    print("ok a body over the limit gets 413")
    expect_error(
        c.post("/v1/runs", json={"language": "python", "code": "1", "memory_mib": 512}, headers=auth(KEY_LIMITED)),
        429,
        "quota_exceeded",
    )
    print("ok memory over the tenant's quota gets 429")
    statuses = [c.get("/v1/openapi.json").status_code]
    statuses += [c.post("/v1/runs", json={"language": "python", "code": ""}, headers=auth(KEY_LIMITED)).status_code for _ in range(6)]
    assert 429 in statuses, statuses
    print(f"ok requests over the tenant's rate get 429 ({statuses})")


def run_json(c):
    r = c.post(
        "/v1/runs",
        json={"language": "python", "code": "import os, sys; print(os.environ['GREETING']); print('e', file=sys.stderr); sys.exit(3)",
              "env": {"GREETING": "hello"}, "timeout_s": 20},
        headers=auth(KEY_A),
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["stdout"] == "hello\n" and result["stderr"] == "e\n" and result["exit_code"] == 3, result
    for field in ["vm_id", "timed_out", "timings", "usage"]:
        assert field in result, (field, result)
    print("ok POST /v1/runs answers with the run's JSON (stdout, stderr, exit code, env)")
    content = bytes(range(256)) * 4
    r = c.post(
        "/v1/runs",
        json={"language": "python",
              "code": "import hashlib; print(hashlib.sha256(open('in/blob.bin','rb').read()).hexdigest())",
              "files": [{"path": "in/blob.bin", "content_b64": base64.b64encode(content).decode()}]},
        headers=auth(KEY_A),
    )
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == hashlib.sha256(content).hexdigest() + "\n", r.json()
    print("ok files of a run land in the guest before the code runs")
    r = c.post("/v1/runs", json={"language": "python", "code": "1",
                                 "files": [{"path": "../x", "content_b64": ""}]}, headers=auth(KEY_A))
    expect_error(r, 400, "invalid_input")
    print("ok a file path leaving the home is a 400")


def run_sse(c):
    body = {"language": "raw", "code": "echo one; echo two >&2; printf '\\377'; echo three"}
    headers = auth(KEY_A) | {"Accept": "text/event-stream"}
    with c.stream("POST", "/v1/runs", json=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        events = sse_events(r)
    names = [name for name, _ in events]
    assert names[-1] == "done", events
    stdout = [json.loads(d) for n, d in events if n == "stdout"]
    stderr = [json.loads(d) for n, d in events if n == "stderr"]
    # Each chunk is one event: text when UTF-8, else the whole chunk as base64.
    data = b"".join(e["text"].encode() if "text" in e else base64.b64decode(e["b64"]) for e in stdout)
    assert data == b"one\n\xffthree\n", events
    assert any("b64" in e for e in stdout), "the chunk with 0xff comes as base64: %r" % events
    assert all(len(e) == 1 and ("text" in e or "b64" in e) for e in stdout), events
    assert stderr and stderr[0]["text"] == "two\n", events
    result = json.loads(events[-1][1])
    assert result["exit_code"] == 0, result
    print("ok SSE streams stdout/stderr events (text and b64) then done")


async def concurrent_runs():
    async with httpx.AsyncClient(base_url=URL, timeout=TIMEOUT, headers=auth(KEY_A)) as c:
        async def one(i):
            r = await c.post("/v1/runs", json={"language": "python", "code": f"print({i} * 2)"})
            assert r.status_code == 200, (i, r.status_code, r.text)
            assert r.json()["stdout"] == f"{i * 2}\n", r.json()
        await asyncio.gather(*(one(i) for i in range(CONCURRENT)))
    print(f"ok {CONCURRENT} concurrent runs all succeeded")


def tenant_isolation(c):
    """Sessions of tenant A are invisible to tenant B."""
    created = c.post("/v1/sessions", json={"language": "python"}, headers=auth(KEY_A))
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    for method, path in [("GET", f"/v1/sessions/{sid}"), ("DELETE", f"/v1/sessions/{sid}"),
                         ("POST", f"/v1/sessions/{sid}/exec"), ("GET", f"/v1/sessions/{sid}/files?dir=.")]:
        body = {"code": "print(1)"} if method == "POST" else None
        r = c.request(method, path, json=body, headers=auth(KEY_B))
        expect_error(r, 404, "session_not_found")
    listed = c.get("/v1/sessions", headers=auth(KEY_B)).json()
    assert all(s["id"] != sid for s in listed["sessions"]), listed
    print("ok tenant B gets 404 for tenant A's session and does not list it")
    sessions(c, sid)


def sessions(c, sid):
    a = auth(KEY_A)
    assert c.get(f"/v1/sessions/{sid}", headers=a).json()["id"] == sid
    assert any(s["id"] == sid for s in c.get("/v1/sessions", headers=a).json()["sessions"])
    r = c.post(f"/v1/sessions/{sid}/exec", json={"code": "x = 41"}, headers=a)
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    r = c.post(f"/v1/sessions/{sid}/exec", json={"code": "print(x + 1)"}, headers=a)
    assert r.json()["stdout"] == "42\n", r.text
    r = c.post(f"/v1/sessions/{sid}/exec", json={"code": "x + 1"}, headers=a)
    assert r.json()["results"] == [{"data": {"text/plain": "42"}, "is_main_result": True}], r.text
    r = c.post(f"/v1/sessions/{sid}/exec", json={"code": "1 / 0"}, headers=a)
    error = r.json()["error"]
    assert error["name"] == "ZeroDivisionError" and "division by zero" in error["value"], r.text
    print("ok a cell's value comes as its main result, an exception as its error")
    code = "print('streamed')\nx * 2"
    with c.stream("POST", f"/v1/sessions/{sid}/exec", json={"code": code},
                  headers=a | {"Accept": "text/event-stream"}) as s:
        events = sse_events(s)
    names = [n for n, _ in events]
    assert names == ["stdout", "result", "done"], events
    assert json.loads(events[1][1])["data"]["text/plain"] == "82", events
    with c.stream("POST", f"/v1/sessions/{sid}/exec", json={"code": "raise KeyError('k')"},
                  headers=a | {"Accept": "text/event-stream"}) as s:
        events = sse_events(s)
    names = [n for n, _ in events]
    assert names[-2:] == ["cell_error", "done"] and "stderr" in names, events
    assert json.loads(events[-2][1])["name"] == "KeyError", events
    print("ok a streamed cell sends stdout, result, cell_error and done events in order")
    put = c.put(f"/v1/sessions/{sid}/files/data/in.txt", content=b"abc", headers=a)
    assert put.status_code == 200 and put.json()["size"] == 3, put.text
    got = c.get(f"/v1/sessions/{sid}/files/data/in.txt", headers=a)
    assert got.content == b"abc" and got.headers["x-sha256"] == put.json()["sha256"], got.headers
    big = bytes((i * 7919) % 251 for i in range(3 * 1024 * 1024 + 5))
    pieces = (big[i:i + 100_000] for i in range(0, len(big), 100_000))
    put = c.put(f"/v1/sessions/{sid}/files/data/big.bin", content=pieces, headers=a)
    assert put.status_code == 200 and put.json()["size"] == len(big), put.text
    assert put.json()["sha256"] == hashlib.sha256(big).hexdigest(), put.text
    with c.stream("GET", f"/v1/sessions/{sid}/files/data/big.bin", headers=a) as got:
        assert got.status_code == 200, got.status_code
        assert "x-sha256" not in got.headers, got.headers
        assert got.headers.get("trailer") == "x-sha256", got.headers
        back = b"".join(got.iter_bytes())
    assert back == big, (len(back), len(big))
    print("ok a 3 MiB body without a length streams in, and streams back whole")
    listed = c.get(f"/v1/sessions/{sid}/files", params={"dir": "data"}, headers=a)
    assert "in.txt" in listed.text, listed.text
    expect_error(c.get(f"/v1/sessions/{sid}/files/nope.txt", headers=a), 404, "file_not_found")
    assert c.delete(f"/v1/sessions/{sid}", headers=a).status_code == 204
    expect_error(c.get(f"/v1/sessions/{sid}", headers=a), 404, "session_not_found")
    print("ok session exec keeps state, streams, files round-trip, delete gives 204")


def main():
    with httpx.Client(base_url=URL, timeout=TIMEOUT) as c:
        open_routes(c)
        refusals(c)
        run_json(c)
        run_sse(c)
        tenant_isolation(c)
    asyncio.run(concurrent_runs())
    with httpx.Client(base_url=URL, timeout=TIMEOUT) as c:
        text = c.get("/metrics").text
        assert 'airlock_runs_total{kind="ok"}' in text, text
        print("ok metrics count the runs")


if __name__ == "__main__":
    main()
