#!/usr/bin/env python3
"""The three-node cluster test (`cargo xtask cluster-test`, docs/deploy.md).

Three `airlock serve` nodes, each in a network namespace of its own
(veth pairs on a bridge, addresses of their own), and Debian's nginx in
front with the routing the Kubernetes deployment ships
(deploy/proxy/airlock.conf.in, rendered here for static addresses).
Shown, through the proxy only:

- 12 sessions spread over all three nodes, each session's calls always
  on its node (the node in every answer matches the id);
- SIGKILL of a node: its sessions answer 404 `session_lost` within 2 s,
  the others go on, new sessions go to live nodes only;
- SIGTERM of a node: it takes no new work, finishes what runs, exits 0;
- the killed node restarted: it rejoins and takes new sessions.

Needs root (namespaces), `ip`, nginx, the `airlock` binary in
$AIRLOCK_BIN and its built images in $AIRLOCK_IMAGES. Everything it
makes is removed at the end, whatever happens.
"""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx

from clean_exit import exit_ok

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "proxy"))
import render  # noqa: E402  (the one renderer of the routing)

AIRLOCK = os.environ["AIRLOCK_BIN"]
# The built images every node uses (each node has a cache of its own).
IMAGES = os.environ["AIRLOCK_IMAGES"]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TAG = f"{os.getpid() % 10000:04d}"
OCTET = 100 + os.getpid() % 150
BRIDGE = f"alkbr{TAG}"
NAMES = ["node-0", "node-1", "node-2"]
SLOTS = 8
TIMEOUT = httpx.Timeout(120.0, connect=5.0)


def log(message):
    print(f"cluster: {message}", flush=True)


def sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def quiet(*args):
    subprocess.run(args, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Network:
    """A bridge in this namespace and one namespace per node on it."""

    def __init__(self, count):
        self.namespaces = [f"alk{TAG}n{i}" for i in range(count)]
        self.addresses = [f"10.77.{OCTET}.{10 + i}" for i in range(count)]

    def __enter__(self):
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"10.77.{OCTET}.1/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for i, (ns, address) in enumerate(zip(self.namespaces, self.addresses)):
            outside, inside = f"alk{TAG}h{i}", f"alk{TAG}g{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", outside, "master", BRIDGE, "up")
            sh("ip", "link", "set", inside, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            sh("ip", "-n", ns, "link", "set", inside, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc):
        for i, ns in enumerate(self.namespaces):
            quiet("ip", "netns", "del", ns)
            quiet("ip", "link", "del", f"alk{TAG}h{i}")
        quiet("ip", "link", "del", BRIDGE)


class Node:
    """One `airlock serve` in its namespace."""

    def __init__(self, work, name, ns, address, keys, jail_base):
        self.name, self.ns, self.address = name, ns, address
        self.url = f"http://{address}:7000"
        self.run_dir = work / f"run-{name}"
        self.run_dir.mkdir(exist_ok=True)
        self.cache_dir = work / f"cache-{name}"
        self.cache_dir.mkdir(exist_ok=True)
        self.config = work / f"{name}.toml"
        self.config.write_text(
            f"max_concurrent_vms = {SLOTS}\n"
            "refuse_when_full = true\n"
            "drain_grace_s = 30\n"
            # One tenant drives the whole test: room for all its sessions.
            f"[quotas]\nlive_sessions = {SLOTS}\nmemory_mib = {SLOTS * 512}\nvcpus = {SLOTS}\n"
            "requests_per_minute = 1000\n"
            f"[jail]\nuid_base = {jail_base}\nuid_count = 4096\n"
        )
        self.keys = keys
        self.log_path = work / f"{name}.log"
        self.process = None

    def start(self):
        log(f"starting {self.name} at {self.url}")
        # A cache of its own, as each Kubernetes node has (its memory
        # templates built there), over the one set of images. Sharing the
        # cache would also share the templates' memory files, which each
        # node's jail gives to its own group (docs/security.md).
        env = dict(os.environ, AIRLOCK_RUN_DIR=str(self.run_dir),
                   AIRLOCK_CACHE_DIR=str(self.cache_dir), AIRLOCK_IMAGES=IMAGES)
        with open(self.log_path, "ab") as sink:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, AIRLOCK, "serve",
                 "--listen", f"{self.address}:7000", "--node-name", self.name,
                 "--e2b-listen", f"{self.address}:{render.E2B_PORT}",
                 "--keys-file", str(self.keys), "--config", str(self.config)],
                env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
            )

    def wait_ready(self, deadline_s=180):
        start = time.monotonic()
        while time.monotonic() - start < deadline_s:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{self.url}/v1/health/ready", timeout=2)
                if ready.status_code == 200:
                    assert ready.json()["node"] == self.name, ready.text
                    return
            time.sleep(0.3)
        raise AssertionError(f"{self.name} not ready in {deadline_s} s:\n{self.log()}")

    def signal(self, sig):
        self.process.send_signal(sig)

    def wait_exit(self, deadline_s):
        try:
            return self.process.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit in {deadline_s} s:\n{self.log()}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self):
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""


class Proxy:
    """Debian's nginx with the shipped routing, for these nodes."""

    def __init__(self, work, nodes):
        self.dir = work / "nginx"
        self.dir.mkdir()
        self.port, self.e2b_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.e2b_url = f"http://127.0.0.1:{self.e2b_port}"
        routing = render.render(
            f"127.0.0.1:{self.port}",
            f"127.0.0.1:{self.e2b_port}",
            [(n.name, n.address) for n in nodes],
            [n.address for n in nodes],
        )
        (self.dir / "airlock.conf").write_text(routing)
        d = self.dir
        (d / "nginx.conf").write_text(
            "worker_processes 1;\n"
            f"error_log {d}/error.log;\n"
            f"pid {d}/nginx.pid;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log {d}/access.log;\n"
            f"  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n"
            f"  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
            f"  include {d}/airlock.conf;\n"
            "}\n"
        )
        self.process = None

    def start(self):
        conf = str(self.dir / "nginx.conf")
        checked = subprocess.run([NGINX, "-t", "-p", str(self.dir), "-c", conf],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", conf, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            with contextlib.suppress(OSError):
                for port in (self.port, self.e2b_port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            time.sleep(0.1)
        raise AssertionError("nginx did not listen")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_of(session_id):
    """The node a session id names (s-<node>-<16 hex>)."""
    assert session_id.startswith("s-"), session_id
    return session_id[2:].rsplit("-", 1)[0]


def create_session(client):
    reply = client.post("/v1/sessions", json={"language": "python"})
    assert reply.status_code == 201, (reply.status_code, reply.text)
    sid = reply.json()["id"]
    assert reply.headers["x-airlock-node"] == node_of(sid), (reply.headers, sid)
    return sid


def run_cell(client, sid, code):
    reply = client.post(f"/v1/sessions/{sid}/exec", json={"code": code})
    assert reply.status_code == 200, (sid, reply.status_code, reply.text)
    assert reply.headers["x-airlock-node"] == node_of(sid), (reply.headers, sid)
    return reply.json()["stdout"]


def expect_kind(reply, status, kind):
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.json()["error"]["kind"] == kind, reply.text


def e2b_sandboxes(proxy, e2b_key):
    """E2B's official SDK through the proxy's E2B door: sandboxes spread,
    each one's calls (the sandbox plane, by header) on its node."""
    os.environ.update(E2B_API_URL=proxy.e2b_url, E2B_SANDBOX_URL=proxy.e2b_url, E2B_API_KEY=e2b_key)
    from e2b import Sandbox  # the official SDK, unchanged

    made = [Sandbox.create(template="base", timeout=120) for _ in range(3)]
    try:
        homes = {node_of(sbx.sandbox_id) for sbx in made}
        assert len(homes) == 3, [sbx.sandbox_id for sbx in made]
        for sbx in made:
            ran = sbx.commands.run("echo hi from $(hostname)")
            assert ran.stdout.startswith("hi from"), ran
            sbx.files.write("note.txt", sbx.sandbox_id)
            assert sbx.files.read("note.txt") == sbx.sandbox_id
    finally:
        for sbx in made:
            assert Sandbox.kill(sbx.sandbox_id), sbx.sandbox_id
    log("ok E2B's SDK through the proxy: 3 sandboxes on 3 nodes, each one's calls on its node")


def scenario(client, nodes, proxy, e2b_key):
    by_name = {n.name: n for n in nodes}
    e2b_sandboxes(proxy, e2b_key)

    # 12 sessions, spread; each one's calls on its node.
    sessions = [create_session(client) for _ in range(12)]
    spread = {name: [s for s in sessions if node_of(s) == name] for name in NAMES}
    log("12 sessions: " + ", ".join(f"{k} {len(v)}" for k, v in spread.items()))
    assert all(spread[name] for name in NAMES), spread
    for i, sid in enumerate(sessions):
        run_cell(client, sid, f"x = {i}")
    for i, sid in enumerate(sessions):
        assert run_cell(client, sid, "print(x)") == f"{i}\n", sid
    log("ok 12 sessions over three nodes, each session's calls on its node")

    # SIGKILL node-1: its sessions are lost at once, the others go on.
    lost_node = by_name["node-1"]
    killed_at = time.monotonic()
    lost_node.signal(signal.SIGKILL)
    lost_node.wait_exit(10)
    for sid in spread["node-1"]:
        expect_kind(client.get(f"/v1/sessions/{sid}"), 404, "session_lost")
    lost_after = time.monotonic() - killed_at
    assert lost_after <= 2.0, f"session_lost after {lost_after:.2f} s"
    for sid in spread["node-0"] + spread["node-2"]:
        assert run_cell(client, sid, "print(x)") == f"{sessions.index(sid)}\n", sid
    for sid in spread["node-0"] + spread["node-2"]:
        assert client.delete(f"/v1/sessions/{sid}").status_code == 204, sid
    fresh = [create_session(client) for _ in range(4)]
    assert all(node_of(s) != "node-1" for s in fresh), fresh
    log(f"ok SIGKILL of node-1: its sessions answer session_lost ({lost_after * 1000:.0f} ms), "
        "the others go on, new sessions go to live nodes")

    # SIGTERM node-2 during a cell: the cell finishes, no new work, exit 0.
    draining = by_name["node-2"]
    on_draining = [s for s in fresh if node_of(s) == "node-2"] or [create_until(client, "node-2")]
    sid = on_draining[0]
    answer = {}

    def long_cell():
        with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=TIMEOUT) as c:
            answer["reply"] = c.post(f"/v1/sessions/{sid}/exec",
                                     json={"code": "import time; time.sleep(4); print('finished')"})

    worker = threading.Thread(target=long_cell)
    worker.start()
    time.sleep(1.0)
    draining.signal(signal.SIGTERM)
    time.sleep(0.3)
    # A draining node stops accepting connections: probes and the proxy
    # see it refuse, while the cell it runs goes on.
    try:
        ready = httpx.get(f"{draining.url}/v1/health/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["draining"] is True, ready.text
    except httpx.ConnectError:
        pass
    during = [create_session(client) for _ in range(2)]
    assert all(node_of(s) == "node-0" for s in during), during
    worker.join(timeout=120)
    reply = answer["reply"]
    assert reply.status_code == 200 and reply.json()["stdout"] == "finished\n", reply.text
    code = draining.wait_exit(90)
    assert code == 0, f"node-2 exited {code}:\n{draining.log()}"
    log("ok SIGTERM of node-2: no new work while it drains, its running cell finished, exit 0")

    # The killed node restarts (its leftovers swept) and takes new sessions.
    lost_node.start()
    lost_node.wait_ready()
    time.sleep(2.5)  # the proxy's fail_timeout for a node that failed
    rejoined = create_until(client, "node-1")
    assert run_cell(client, rejoined, "print(6 * 7)") == "42\n"
    for sid in spread["node-1"]:
        expect_kind(client.get(f"/v1/sessions/{sid}"), 404, "session_not_found")
    log("ok node-1 restarted: it rejoins and takes new sessions")


def create_until(client, wanted, tries=8):
    """Creates sessions until one lands on `wanted`; deletes the others."""
    made = []
    try:
        for _ in range(tries):
            sid = create_session(client)
            if node_of(sid) == wanted:
                return sid
            made.append(sid)
        raise AssertionError(f"no session landed on {wanted} in {tries}: {made}")
    finally:
        for sid in made:
            client.delete(f"/v1/sessions/{sid}")


def check_kubernetes_rendering():
    shipped = (ROOT / "deploy" / "kubernetes" / "proxy" / "airlock.conf").read_text()
    assert shipped == render.kubernetes(), (
        "deploy/kubernetes/proxy/airlock.conf is out of date: "
        "python3 deploy/proxy/render.py kubernetes > deploy/kubernetes/proxy/airlock.conf"
    )
    log("ok the Kubernetes ConfigMap's routing is the template's current rendering")


def main():
    check_kubernetes_rendering()
    started = time.monotonic()
    work = pathlib.Path(tempfile.mkdtemp(prefix="alc-", dir="/tmp"))
    keys = work / "keys.toml"
    def add_key(*extra):
        return subprocess.run(
            [AIRLOCK, "serve", "keys", "add", "--tenant", "cluster", "--keys-file", str(keys), *extra],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    key, e2b_key = add_key(), add_key("--format", "e2b")
    nodes, proxy = [], None
    ok = False
    try:
        with Network(len(NAMES)) as net:
            nodes = [
                Node(work, name, ns, address, keys, 1_950_000_000 + i * 100_000)
                for i, (name, ns, address) in enumerate(zip(NAMES, net.namespaces, net.addresses))
            ]
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_ready()
            proxy = Proxy(work, nodes)
            proxy.start()
            log(f"three nodes ready behind nginx at {proxy.url} in {time.monotonic() - started:.1f} s")
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=proxy.url, headers=headers, timeout=TIMEOUT) as client:
                scenario(client, nodes, proxy, e2b_key)
            ok = True
    finally:
        if proxy:
            proxy.stop()
        for node in nodes:
            node.stop()
        if not ok:
            for node in nodes:
                print(f"--- {node.name} log (tail)\n{node.log()}", file=sys.stderr)
            if proxy:
                with contextlib.suppress(OSError):
                    print((proxy.dir / "error.log").read_text()[-3000:], file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    log(f"passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
    exit_ok()
