#!/usr/bin/env python3
"""The upstream of envoy_diff.sh: answers every request with what it received.

    python3 benches/echo_upstream.py PORT        # binds 127.0.0.1:PORT only

HTTP/1.1 with keep-alive (a proxy pools its upstream connections). Request bodies are read
whole, Content-Length or chunked. The answer is 200 with a text body:

    echo: the upstream received
    method: POST
    path: /a?b=c
    header: accept: */*              one line per header, names lowercased, sorted by name
    header: host: diff.test          (a repeated header keeps its values in arrival order)
    body-bytes: 5
    body:
    hello                            the request body, byte for byte, then nothing more

Request headers steer the answer, so a case can exercise response paths:
  x-echo-status: 404               answer with this status instead of 200
  x-echo-reply: body               the answer's body is the request body alone (a fixed body that
                                   does not depend on the headers a proxy adds)
  x-echo-add: name=value           add this response header; repeat the header for more
  x-echo-size: N                   the answer's body is N bytes of filler instead
  x-echo-chunks: K                 send the body chunked, in K writes 20 ms apart (default: in
                                   one write, with content-length)

GET /__echo/count answers the number of requests served so far (itself not counted): the script
asks it directly, not through a proxy, to tell whether a request reached the upstream.
"""

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNT_PATH = "/__echo/count"
FILLER = b"0123456789abcdef" * 4 + b"\n"  # x-echo-size bodies repeat this


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a proxy's pooled connection would
    # wait for its own delayed ACK (40ms) before the body arrives.
    disable_nagle_algorithm = True
    served = 0
    lock = threading.Lock()

    def handle_any(self):
        if self.path == COUNT_PATH:
            self.answer(200, [], f"{Echo.served}\n".encode())
            return
        body = self.read_body()
        with Echo.lock:
            Echo.served += 1
        headers = [(k.lower(), v) for k, v in self.headers.items()]
        headers.sort(key=lambda kv: kv[0])  # stable: repeated headers keep their order
        status = int(self.headers.get("x-echo-status", "200"))
        extra = [v.split("=", 1) for v in self.headers.get_all("x-echo-add", []) if "=" in v]
        if "x-echo-size" in self.headers:
            size = int(self.headers["x-echo-size"])
            payload = (FILLER * (size // len(FILLER) + 1))[:size]
        elif self.headers.get("x-echo-reply", "") == "body":
            payload = body
        else:
            lines = ["echo: the upstream received", f"method: {self.command}", f"path: {self.path}"]
            lines += [f"header: {k}: {v}" for k, v in headers]
            lines += [f"body-bytes: {len(body)}", "body:"]
            payload = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape") + body
        self.answer(status, extra, payload, int(self.headers.get("x-echo-chunks", "0")))

    def read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after the chunk
        length = int(self.headers.get("content-length", "0") or "0")
        return self.rfile.read(length) if length else b""

    def answer(self, status, extra, payload, chunks=0):
        self.send_response(status)
        self.send_header("content-type", "text/plain; charset=utf-8")
        for name, value in extra:
            self.send_header(name, value)
        if chunks <= 0:
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        step = -(-len(payload) // chunks) or 1
        for start in range(0, len(payload), step):
            piece = payload[start:start + step]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(0.02)  # so the proxy reads the pieces apart
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = handle_any

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # quiet: the script compares answers, not logs


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: echo_upstream.py PORT")
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
