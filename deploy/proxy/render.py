#!/usr/bin/env python3
"""Renders the proxy's routing (airlock.conf.in) for one place it runs.

The same template serves the Kubernetes deployment and the three-node
test; only the addresses differ:

  render.py kubernetes [--replicas N] [--namespace NS] > ../kubernetes/proxy/airlock.conf
      pod DNS names of the StatefulSet's headless Service, resolved by
      the cluster's DNS at request time; new work through the ClusterIP
      Service, which only lists ready nodes.

  render.py static --listen ADDR --e2b-listen ADDR NAME=HOST ...
      fixed addresses (what `cargo xtask cluster-test` uses); each node's
      REST API on port 7000, its E2B listener on 3000.

Imported, `render()` does the same (tests/clients/cluster_client.py).
"""

import argparse
import pathlib
import re
import sys

TEMPLATE = pathlib.Path(__file__).with_name("airlock.conf.in")
KUBERNETES_OUTPUT = pathlib.Path(__file__).parent.parent / "kubernetes" / "proxy" / "airlock.conf"
NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
PORT = 7000
E2B_PORT = 3000


def render(listen, e2b_listen, nodes, any_node_hosts, resolver=None, template=TEMPLATE):
    """The template with its @...@ lines filled in.

    listen, e2b_listen: nginx's `listen` arguments of the REST and the E2B
    front doors; nodes: (name, host) pairs, where each node's sessions and
    sandboxes go (its REST API on PORT, its E2B listener on E2B_PORT);
    any_node_hosts: the hosts new work goes to; resolver: a `resolver`
    directive's arguments (needed when hosts are names).
    """
    for name, _ in nodes:
        if not NODE_NAME.match(name):
            raise ValueError(f"node name {name!r} is not a DNS label")
    text = pathlib.Path(template).read_text()

    def servers(port):
        return "\n".join(
            f"    server {host}:{port} max_fails=1 fail_timeout=2s;" for host in any_node_hosts
        )

    resolver_line = f"resolver {resolver};" if resolver else "# (addresses are fixed: no resolver)"
    for key, value in {
        "@RESOLVER@": resolver_line,
        "@NODE_MAP@": "\n".join(f"    {name} {host}:{PORT};" for name, host in nodes),
        "@NODE_E2B_MAP@": "\n".join(f"    {name} {host}:{E2B_PORT};" for name, host in nodes),
        "@ANY_NODE_SERVERS@": servers(PORT),
        "@ANY_NODE_E2B_SERVERS@": servers(E2B_PORT),
        "@LISTEN@": listen,
        "@E2B_LISTEN@": e2b_listen,
    }.items():
        if key not in text:
            raise ValueError(f"the template has no {key}")
        text = text.replace(key, value)
    return text


def kubernetes(replicas=3, namespace="airlock"):
    """The rendering the Kubernetes ConfigMap ships."""
    domain = f"{namespace}.svc.cluster.local"
    nodes = [(f"airlock-{i}", f"airlock-{i}.airlock-nodes.{domain}") for i in range(replicas)]
    # The ClusterIP Service sends to ready pods only (not draining, not
    # full); listed once per node so that nginx's retries have somewhere
    # to go.
    return render(
        "8080",
        "8081",
        nodes,
        [f"airlock.{domain}"] * replicas,
        resolver="kube-dns.kube-system.svc.cluster.local valid=10s ipv6=off",
    )


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="target", required=True)
    k8s = sub.add_parser("kubernetes", help="the ConfigMap's rendering")
    k8s.add_argument("--replicas", type=int, default=3)
    k8s.add_argument("--namespace", default="airlock")
    static = sub.add_parser("static", help="fixed node addresses")
    static.add_argument("--listen", required=True)
    static.add_argument("--e2b-listen", required=True)
    static.add_argument("nodes", nargs="+", metavar="NAME=HOST")
    args = parser.parse_args(argv)
    if args.target == "kubernetes":
        sys.stdout.write(kubernetes(args.replicas, args.namespace))
    else:
        nodes = [tuple(n.split("=", 1)) for n in args.nodes]
        sys.stdout.write(render(args.listen, args.e2b_listen, nodes, [host for _, host in nodes]))


if __name__ == "__main__":
    main(sys.argv[1:])
