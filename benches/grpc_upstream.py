#!/usr/bin/env python3
"""The gRPC upstream of envoy_diff.sh's `grpc` run (grpcio, h2c on 127.0.0.1 only):

    python3 benches/grpc_upstream.py PORT

Messages are raw bytes (no protobuf), as the fixture filters send them:
  grpc.Chat/Echo     bidirectional: initial metadata x-chat: open and x-caller-seen (the
                     request's x-caller), then echo:<message> for each message as it arrives;
                     when the client ends its side, status 0 "bye" with trailer x-count: N
  grpc.Chat/Refuse   PERMISSION_DENIED "denied", trailers-only
  grpc.Echo/Say      unary: answers the request message
Any other method is UNIMPLEMENTED, as grpcio answers it.
"""
import sys
from concurrent import futures

import grpc


def chat_echo(messages, context):
    caller = dict(context.invocation_metadata()).get("x-caller", "")
    context.send_initial_metadata((("x-chat", "open"), ("x-caller-seen", caller)))
    count = 0
    for message in messages:
        count += 1
        yield b"echo:" + message
    context.set_trailing_metadata((("x-count", str(count)),))
    context.set_details("bye")


def chat_refuse(_messages, context):
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")


def echo_say(message, _context):
    return message


def raw(data):
    return data


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: grpc_upstream.py PORT")
    chat = grpc.method_handlers_generic_handler("grpc.Chat", {
        "Echo": grpc.stream_stream_rpc_method_handler(chat_echo, raw, raw),
        "Refuse": grpc.stream_stream_rpc_method_handler(chat_refuse, raw, raw),
    })
    echo = grpc.method_handlers_generic_handler("grpc.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(echo_say, raw, raw),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((chat, echo))
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
