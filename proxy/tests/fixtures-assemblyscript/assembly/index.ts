// A filter built with the AssemblyScript Proxy-Wasm SDK (@solo-io/proxy-runtime, ABI 0.2.0),
// run by proxy/tests/e2e/other_sdks.rs. Root id `as_tag`. It stamps the plugin configuration
// on responses (x-as-tag), tells the upstream the path it saw (x-as-seen), logs, and answers
// /deny itself with a 403 and gRPC status 2 (UNKNOWN), which only a gRPC request gets as gRPC.
// Rebuild with ../build.sh; the built as_tag.wasm is committed.
export * from "@solo-io/proxy-runtime/proxy";
import { RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context, send_local_response, GrpcStatusValues, log, LogLevelValues } from "@solo-io/proxy-runtime";

class TagRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Tag(context_id, this);
  }
}

class Tag extends Context {
  constructor(context_id: u32, root_context: TagRoot) {
    super(context_id, root_context);
  }
  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const path = stream_context.headers.request.get(":path");
    if (path == "/deny") {
      send_local_response(403, "denied by as", String.UTF8.encode("no entry\n"), [], GrpcStatusValues.Unknown);
      return FilterHeadersStatusValues.StopIteration;
    }
    stream_context.headers.request.add("x-as-seen", path);
    return FilterHeadersStatusValues.Continue;
  }
  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-tag", this.root_context.getConfiguration());
    log(LogLevelValues.info, "as filter tagged a response");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new TagRoot(context_id); }, "as_tag");
