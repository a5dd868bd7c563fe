"""The timing half of swap_side_by_side.sh: starts the upstream and each proxy, swaps the
filter's configuration SWAPS times per row, and prints one table row per proxy.

Environment (set by the .sh): SWAPS, WORK, ENVOY_BIN, SLUICE_BIN, MODULE, ECHO.
"""

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"
SWAPS = int(os.environ["SWAPS"])
WORK = os.environ["WORK"]
MODULE = os.environ["MODULE"]
ENVOY_BIN = os.environ["ENVOY_BIN"]
SLUICE_BIN = os.environ["SLUICE_BIN"]
TIMEOUT = 30.0


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tag_on_new_connection(port):
    """The x-wasm-tag of one GET / on a fresh connection (None if it fails)."""
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        conn.request("GET", "/", headers={"Host": "bench"})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.getheader("x-wasm-tag")
    except OSError:
        return None


class KeptConnection:
    """One keep-alive connection, opened before the swaps, reopened only if the proxy closes it:
    does a client that keeps its connection get the new configuration too?"""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=2)

    def tag(self):
        for _ in range(2):
            try:
                self.conn.request("GET", "/", headers={"Host": "bench"})
                response = self.conn.getresponse()
                response.read()
                return response.getheader("x-wasm-tag")
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        return None


def swaps(port, change):
    """Runs SWAPS swaps; `change(tag)` makes one. Returns the times and how many swaps the
    kept connection saw right away."""
    kept = KeptConnection(port)
    kept.tag()
    times, kept_saw = [], 0
    for swap in range(1, SWAPS + 1):
        tag = f"v{swap}"
        since = time.monotonic()
        change(tag)
        times.append(wait_for_tag(port, tag, since))
        kept_saw += kept.tag() == tag
    return times, kept_saw


def wait_for_tag(port, tag, since):
    """Seconds from `since` to the first response carrying `tag`."""
    while time.monotonic() - since < TIMEOUT:
        if tag_on_new_connection(port) == tag:
            return time.monotonic() - since
    raise SystemExit(f"no response with x-wasm-tag {tag} within {TIMEOUT}s on port {port}")


def replace_file(path, text):
    staged = path + ".staged"
    with open(staged, "w") as f:
        f.write(text)
    os.rename(staged, path)


def start(name, argv):
    log = open(os.path.join(WORK, f"{name}.log"), "w")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def wait_port(port, process):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited; see {WORK}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}; see {WORK}")


# === Envoy: listener from a watched LDS file ===

def envoy_listener(port, upstream_cluster, tag):
    wasm = {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "tagger",
                "root_id": "",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": tag},
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": MODULE}}},
            },
        },
    }
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "main",
        "route_config": {
            "name": "main",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": upstream_cluster}}]}],
        },
        "http_filters": [wasm, router],
    }
    listener = {
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "main",
        "address": {"socket_address": {"address": HOST, "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }
    return json.dumps({"resources": [listener]})


def envoy_row(upstream_port):
    folder = os.path.join(WORK, "envoy-lds")
    os.makedirs(folder)
    lds = os.path.join(folder, "lds.json")
    port, admin = free_port(), free_port()
    with open(lds, "w") as f:
        f.write(envoy_listener(port, "upstream", "v0"))
    bootstrap = {
        "node": {"id": "bench", "cluster": "bench"},
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": admin}}},
        "dynamic_resources": {"lds_config": {"resource_api_version": "V3", "path_config_source": {
            "path": lds, "watched_directory": {"path": folder}}}},
        "static_resources": {"clusters": [{
            "name": "upstream", "type": "STATIC", "connect_timeout": "5s",
            "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": upstream_port}}}}]}]}}]},
    }
    config = os.path.join(WORK, "envoy-bootstrap.json")
    with open(config, "w") as f:
        json.dump(bootstrap, f)
    envoy = start("envoy", [ENVOY_BIN, "-c", config, "--concurrency", "1", "--disable-hot-restart",
                            "--log-level", "warn"])
    try:
        wait_port(port, envoy)
        wait_for_tag(port, "v0", time.monotonic())
        return swaps(port, lambda tag: replace_file(lds, envoy_listener(port, "upstream", tag)))
    finally:
        envoy.terminate()
        envoy.wait()


# === Sluice ===

def sluice_yaml(port, upstream_port, tag):
    filters = f'[{{ name: tagger, module: "{MODULE}", config: "{tag}" }}]' if tag else "[]"
    return (f"workers: 1\nlisteners:\n  - name: main\n    address: {HOST}:{port}\n"
            f"    filters: {filters}\n    routes: [{{ match: {{ prefix: / }}, cluster: upstream }}]\n"
            f"clusters: [{{ name: upstream, endpoints: [\"{HOST}:{upstream_port}\"] }}]\n")


def sluice_file_row(upstream_port):
    port = free_port()
    config = os.path.join(WORK, "sluice-file.yaml")
    with open(config, "w") as f:
        f.write(sluice_yaml(port, upstream_port, "v0"))
    sluice = start("sluice-file", [SLUICE_BIN, "proxy", "--config", config])
    try:
        wait_port(port, sluice)
        wait_for_tag(port, "v0", time.monotonic())
        time.sleep(0.5)  # the watch starts right after the listeners
        return swaps(port, lambda tag: replace_file(config, sluice_yaml(port, upstream_port, tag)))
    finally:
        sluice.terminate()
        sluice.wait()


def sluice_push_row(upstream_port):
    port, control_port = free_port(), free_port()
    url = f"http://{HOST}:{control_port}"
    control = start("sluice-control", [SLUICE_BIN, "control", "--listen", f"{HOST}:{control_port}",
                                       "--data-dir", os.path.join(WORK, "control")])
    config = os.path.join(WORK, "sluice-push.yaml")
    with open(config, "w") as f:
        f.write(sluice_yaml(port, upstream_port, None))
    proxy = None
    try:
        wait_port(control_port, control)
        proxy = start("sluice-push", [SLUICE_BIN, "proxy", "--config", config, "--control", url])
        wait_port(port, proxy)
        push = lambda tag: subprocess.run(
            [SLUICE_BIN, "push", MODULE, "--name", "tagger", "--config", tag, "--control", url],
            check=True, stdout=subprocess.DEVNULL)
        push("v0")
        wait_for_tag(port, "v0", time.monotonic())
        return swaps(port, push)
    finally:
        for process in (proxy, control):
            if process is not None:
                process.terminate()
                process.wait()


def row(name, measured):
    times, kept_saw = measured
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {p99:.1f} | {ms[-1]:.1f} | {kept_saw}/{len(ms)} |")


def main():
    upstream_port = free_port()
    upstream = start("upstream", [sys.executable, os.environ["ECHO"], str(upstream_port)])
    try:
        wait_port(upstream_port, upstream)
        rows = [("envoy 1.40 (LDS file, V8)", envoy_row(upstream_port)),
                ("sluice (config file)", sluice_file_row(upstream_port)),
                ("sluice (control, `sluice push`)", sluice_push_row(upstream_port))]
    finally:
        upstream.terminate()
        upstream.wait()
    print("\n| row | swaps | p50 ms | p99 ms | max ms | kept connection saw it |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, measured in rows:
        row(name, measured)


main()
