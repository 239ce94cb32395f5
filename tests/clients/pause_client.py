"""Pause and resume through `airlock serve`'s REST API (httpx), across a
server restart: `pause` starts a python session, gives it a variable, a
file and a thread counting in the background, pauses it and prints its
id; `resume` (against the restarted server) finds it listed as paused
with its size, resumes it under the same id and checks all three.

Usage: pause_client.py pause URL KEY
       pause_client.py resume URL KEY SESSION_ID
Prints `ok ...` lines (and `id <session id>`); any failure raises.
"""

import sys
import time

import httpx

# A template is built on first use under TCG.
TIMEOUT = 300

SETUP = """import threading, time
x = 41 + 1
ticks = [0]
def count():
    while True:
        ticks[0] += 1
        time.sleep(0.02)
threading.Thread(target=count, daemon=True).start()
open("note.txt", "w").write("kept on disk")
time.sleep(0.3)
print(ticks[0])"""


def cell(client, sid, code):
    r = client.post(f"/v1/sessions/{sid}/exec", json={"code": code, "timeout_s": 60})
    r.raise_for_status()
    body = r.json()
    assert body["exit_code"] == 0, body
    return body["stdout"].strip()


def pause(client):
    r = client.post("/v1/sessions", json={"language": "python"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert int(cell(client, sid, SETUP)) > 0
    r = client.post(f"/v1/sessions/{sid}/pause")
    assert r.status_code == 200, r.text
    paused = r.json()
    assert paused["id"] == sid and paused["state"] == "paused", paused
    assert paused["bytes"] > 1 << 20, paused
    assert paused["expires_at"] > time.time() + 6 * 24 * 3600, paused
    # Its calls now answer 404; it is listed as paused.
    r = client.post(f"/v1/sessions/{sid}/exec", json={"code": "x"})
    assert r.status_code == 404, r.text
    listed = {s["id"]: s for s in client.get("/v1/sessions").json()["sessions"]}
    assert listed[sid]["state"] == "paused", listed
    print("ok paused", paused["bytes"], "bytes")
    print("id", sid)


def resume(client, sid):
    listed = {s["id"]: s for s in client.get("/v1/sessions").json()["sessions"]}
    assert listed[sid]["state"] == "paused" and listed[sid]["bytes"] > 0, listed
    print("ok listed after the restart")
    r = client.post(f"/v1/sessions/{sid}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == sid and r.json()["state"] == "running", r.json()
    assert cell(client, sid, "print(x)") == "42"
    assert cell(client, sid, "print(open('note.txt').read())") == "kept on disk"
    before = int(cell(client, sid, "print(ticks[0])"))
    after = int(cell(client, sid, "time.sleep(0.5); print(ticks[0])"))
    assert after > before, (before, after)
    guest = float(cell(client, sid, "print(time.time())"))
    assert abs(guest - time.time()) < 30, guest
    print("ok resumed with its variable, file and counting thread")
    # Resumed: no longer paused; a second resume is 404.
    r = client.post(f"/v1/sessions/{sid}/resume")
    assert r.status_code == 404, r.text
    r = client.delete(f"/v1/sessions/{sid}")
    assert r.status_code == 204, r.text
    print("ok closed")


def main():
    mode, url, key = sys.argv[1:4]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT) as client:
        if mode == "pause":
            pause(client)
        else:
            resume(client, sys.argv[4])


if __name__ == "__main__":
    main()
