#!/usr/bin/env python3
"""Normalizes one `curl -s -i` answer for envoy_diff.sh, so Envoy's and Sluice's compare as text.

    envoy_diff_normalize.py RAW CURL_EXIT UPSTREAM_REQUESTS REQUEST_LINE [KEEP] > normalized.txt

KEEP, comma-separated header names, keeps those of the dropped headers for cases about framing
(content-length, connection) in the response the client got.

Takes away only what legitimately differs between two proxies and is not about Wasm (the list
is in benches/README.md, "envoy_diff.sh"); everything else is kept byte for byte: the status
code, every other response header in order, the body, and, when the body is echo_upstream.py's
listing, every header the upstream received.
"""

import hashlib
import re
import sys

# Headers each proxy writes its own way, whoever's side of the proxy they are on.
DROPPED = {
    "date", "server",                            # stamped by each proxy
    "connection", "keep-alive",                  # hop-by-hop, per connection
    "content-length", "transfer-encoding",       # framing: length vs chunked
    "x-forwarded-for", "x-forwarded-proto",      # each proxy's forwarding policy
}
DROPPED_PREFIXES = ("x-envoy-", "x-sluice-")     # each proxy's own diagnostics
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)
BIG_BODY = 4096                                  # larger bodies are summarized

CURL_EXITS = {
    7: "could not connect",
    18: "response body shorter than announced",
    28: "timed out (--max-time)",
    52: "empty reply from server (connection closed before a response)",
    56: "failure receiving data (connection reset)",
}


def normalize_header(name, value, keep=()):
    """(name, value) as compared, or None to leave the header out."""
    name = name.strip().lower()
    value = value.strip()
    if name in keep:
        return name, value
    if name in DROPPED or name.startswith(DROPPED_PREFIXES):
        return None
    if name == "x-request-id":
        value = UUID.sub("<uuid>", value)  # a fresh one per request; that it is there still counts
    if name == "x-wasm-source":
        value = re.sub(r":\d+$", ":<client port>", value)  # an ephemeral port
    return name, value


def split_response(raw):
    """(status line, [(name, value)], body) of the final response; 1xx answers are skipped."""
    while True:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            head, sep, rest = raw.partition(b"\n\n")
        lines = head.decode("latin-1").splitlines()
        status = lines[0] if lines else ""
        if re.match(r"HTTP/\S+ 1\d\d", status) and sep:
            raw = rest
            continue
        headers = [tuple(line.split(":", 1)) for line in lines[1:] if ":" in line]
        return status, headers, rest


def text(data):
    return data.decode("utf-8", "backslashreplace")


def normalize_echo_listing(body):
    """echo_upstream.py's listing with each header line normalized as a response header is."""
    listing, sep, request_body = body.partition(b"\nbody:\n")
    out = []
    for line in text(listing).split("\n"):
        if line.startswith("header: "):
            name, _, value = line[len("header: "):].partition(":")
            kept = normalize_header(name, value)
            if kept is None:
                continue
            line = f"header: {kept[0]}: {kept[1]}"
        out.append(line)
    return "\n".join(out).encode() + sep + request_body


def render_body(body):
    if body.startswith(b"echo: the upstream received\n"):
        body = normalize_echo_listing(body)
    if len(body) > BIG_BODY:
        return (f"({len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()[:16]}; "
                f"first 64: {text(body[:64])!r}; last 64: {text(body[-64:])!r})\n")
    if not body:
        return "(empty)\n"
    shown = text(body)
    return shown if shown.endswith("\n") else shown + "\n(no newline at the end)\n"


def main():
    raw_path, curl_exit, upstream, request = sys.argv[1:5]
    keep = {name.strip().lower() for name in (sys.argv[5] if len(sys.argv) > 5 else "").split(",") if name.strip()}
    if keep:
        request += f" (kept: {', '.join(sorted(keep))})"
    with open(raw_path, "rb") as f:
        raw = f.read()
    out = [f"request: {request}"]
    if curl_exit != "0":
        reason = CURL_EXITS.get(int(curl_exit), "see `man curl`, EXIT CODES")
        out.append(f"curl: exit {curl_exit}: {reason}")
    if raw:
        status, headers, body = split_response(raw)
        code = status.split()[1] if len(status.split()) > 1 else status
        out.append(f"status: {code}")  # the reason phrase is each proxy's own text
        for name, value in headers:
            kept = normalize_header(name, value, keep)
            if kept is not None:
                out.append(f"header: {kept[0]}: {kept[1]}")
        out.append("body:")
        if curl_exit != "0":
            out.append("(the transfer failed: how much of the body arrived is not compared)")
        else:
            out.append(render_body(body)[:-1])  # it ends in a newline, which the join puts back
    else:
        out.append("(no response)")
    out.append(f"upstream received: {upstream} request(s)")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
