"""The timing half of swap_side_by_side.sh: starts each proxy, swaps the filter's
configuration SWAPS times per row, then LOAD_SWAPS times more while wrk loads the proxy, and
prints one table row per proxy for each phase.

Environment (set by the .sh): SWAPS, LOAD_SWAPS, LOAD_SECONDS, CONNECTIONS, WORK, ENVOY_BIN,
SLUICE_BIN, MODULE, UPSTREAM_PORT, PROXY_PIN and LOAD_PIN (command prefixes such as
"taskset -c 0", or empty), PIN_NOTE.
"""

import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"
SWAPS = int(os.environ["SWAPS"])
LOAD_SWAPS = int(os.environ["LOAD_SWAPS"])
LOAD_SECONDS = int(os.environ["LOAD_SECONDS"])
CONNECTIONS = int(os.environ["CONNECTIONS"])
PROXY_PIN = os.environ.get("PROXY_PIN", "").split()
LOAD_PIN = os.environ.get("LOAD_PIN", "").split()
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
    """Runs SWAPS swaps; `change(tag)` makes one. Returns the times, how many swaps the kept
    connection saw right away, and what the swaps under load cost the traffic."""
    kept = KeptConnection(port)
    kept.tag()
    times, kept_saw = [], 0
    for swap in range(1, SWAPS + 1):
        tag = f"v{swap}"
        since = time.monotonic()
        change(tag)
        times.append(wait_for_tag(port, tag, since))
        kept_saw += kept.tag() == tag
    return times, kept_saw, swaps_under_load(port, change)


def swaps_under_load(port, change):
    """The same wrk load twice, LOAD_SECONDS each: without swaps, then with LOAD_SWAPS swaps
    spread over the run (the first and last second without swaps). Returns wrk's numbers of the
    run with swaps, its req/s without, and the swaps made; None with LOAD_SECONDS=0."""
    if LOAD_SECONDS == 0:
        return None
    calm = run_load(port, lambda started: None)

    def swap_during(started):
        gap = (LOAD_SECONDS - 2) / LOAD_SWAPS
        time.sleep(1)
        for swap in range(1, LOAD_SWAPS + 1):
            tag = f"load{swap}"
            since = time.monotonic()
            change(tag)
            wait_for_tag(port, tag, since)
            # Evenly spaced from the first second, however long each swap took.
            time.sleep(max(0.0, started + 1 + swap * gap - time.monotonic()))
        return LOAD_SWAPS

    with_swaps = run_load(port, swap_during)
    return with_swaps | {"calm_rps": calm["rps"]}


def run_load(port, during):
    """Runs wrk for LOAD_SECONDS and `during(start time)` meanwhile; wrk's numbers, and what
    `during` returned as "swaps"."""
    wrk = subprocess.Popen(
        LOAD_PIN + ["wrk", "--latency", "-t", "1", "-c", str(CONNECTIONS), "-d", f"{LOAD_SECONDS}s",
                    f"http://{HOST}:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        made = during(time.monotonic())
        output, _ = wrk.communicate(timeout=LOAD_SECONDS + 30)
    finally:
        if wrk.poll() is None:
            wrk.send_signal(signal.SIGKILL)
            wrk.wait()
    with open(os.path.join(WORK, f"wrk-{port}-{made or 0}.txt"), "w") as f:
        f.write(output)
    return parse_wrk(output) | {"swaps": made}


def parse_wrk(output):
    """req/s, p99 (ms), non-2xx responses and socket errors from `wrk --latency` output."""
    def number(pattern, default=0.0):
        found = re.search(pattern, output, re.MULTILINE)
        return float(found.group(1)) if found else default
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)$", output, re.MULTILINE)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if not re.search(r"^Requests/sec:", output, re.MULTILINE):
        raise SystemExit(f"wrk reported no result:\n{output}")
    return {
        "rps": number(r"^Requests/sec:\s+([\d.]+)"),
        "requests": int(number(r"^\s+(\d+) requests in")),
        "p99_ms": float(p99.group(1)) * units[p99.group(2)] if p99 else None,
        "non_2xx": int(number(r"Non-2xx or 3xx responses: (\d+)")),
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }


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


def start(name, argv, pinned=True):
    """Starts a process of the row, on the proxy's CPU unless `pinned` is false."""
    log = open(os.path.join(WORK, f"{name}.log"), "w")
    return subprocess.Popen((PROXY_PIN if pinned else []) + argv, stdout=log, stderr=subprocess.STDOUT)


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
                                       "--data-dir", os.path.join(WORK, "control")], pinned=False)
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
    times, kept_saw, _ = measured
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {p99:.1f} | {ms[-1]:.1f} | {kept_saw}/{len(ms)} |")


def load_row(name, measured):
    load = measured[2]
    failed = load["non_2xx"] + load["socket_errors"]
    p99 = "-" if load["p99_ms"] is None else f"{load['p99_ms']:.2f}"
    print(f"| {name} | {load['swaps']} | {load['calm_rps']:.0f} | {load['rps']:.0f} | {p99} | {load['requests']} | {failed} "
          f"(non-2xx {load['non_2xx']}, socket {load['socket_errors']}) |")


def main():
    upstream_port = int(os.environ["UPSTREAM_PORT"])
    rows = [("envoy 1.40 (LDS file, V8)", envoy_row(upstream_port)),
            ("sluice (config file)", sluice_file_row(upstream_port)),
            ("sluice (control, `sluice push`)", sluice_push_row(upstream_port))]
    print("\n| row | swaps | p50 ms | p99 ms | max ms | kept connection saw it |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, measured in rows:
        row(name, measured)
    if LOAD_SECONDS:
        print(f"\nUnder load: wrk -t 1 -c {CONNECTIONS} -d {LOAD_SECONDS}s; {os.environ.get('PIN_NOTE', '')}\n")
        print("| row | swaps under load | req/s without swaps | req/s with swaps | p99 ms | requests | failed requests |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for name, measured in rows:
            load_row(name, measured)


main()
