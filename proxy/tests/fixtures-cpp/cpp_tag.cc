// A filter built with the C++ Proxy-Wasm SDK (proxy-wasm-cpp-sdk, Emscripten), run by
// proxy/tests/e2e/other_sdks.rs. Root id `cpp_tag`.
//
// - It stamps the plugin configuration on responses (x-cpp-tag) and tells the upstream the
//   path it saw (x-cpp-seen) and its plugin_name property (x-cpp-plugin).
// - It counts requests in shared data with compare-and-swap (x-cpp-hits on the response).
// - For paths under /note, it appends a line with the body's size to the response body
//   (buffered whole).
// - It answers /deny itself: 403 with gRPC status 7 (PERMISSION_DENIED), which only a gRPC
//   request gets as gRPC.
//
// Rebuild with build.sh; the built cpp_tag.wasm is committed.

#include <string>
#include <string_view>

#include "proxy_wasm_intrinsics.h"

class TagRoot : public RootContext {
public:
  explicit TagRoot(uint32_t id, std::string_view root_id) : RootContext(id, root_id) {}

  bool onConfigure(size_t size) override {
    tag_ = getBufferBytes(WasmBufferType::PluginConfiguration, 0, size)->toString();
    return true;
  }

  const std::string &tag() const { return tag_; }

private:
  std::string tag_;
};

class Tag : public Context {
public:
  explicit Tag(uint32_t id, RootContext *root) : Context(id, root) {}

  FilterHeadersStatus onRequestHeaders(uint32_t, bool) override {
    auto path = getRequestHeader(":path")->toString();
    if (path == "/deny") {
      sendLocalResponse(403, "denied by cpp", "no entry\n", {}, GrpcStatus::PermissionDenied);
      return FilterHeadersStatus::StopIteration;
    }
    addRequestHeader("x-cpp-seen", path);
    note_ = path.rfind("/note", 0) == 0;
    std::string plugin;
    if (getValue({"plugin_name"}, &plugin)) {
      addRequestHeader("x-cpp-plugin", plugin);
    }
    hits_ = countHit();
    return FilterHeadersStatus::Continue;
  }

  FilterHeadersStatus onResponseHeaders(uint32_t, bool) override {
    auto *root = static_cast<TagRoot *>(this->root());
    addResponseHeader("x-cpp-tag", root->tag());
    addResponseHeader("x-cpp-hits", std::to_string(hits_));
    if (note_) {
      // The body grows below: the length the upstream gave no longer holds.
      removeResponseHeader("content-length");
    }
    LOG_INFO("cpp filter tagged a response");
    return FilterHeadersStatus::Continue;
  }

  FilterDataStatus onResponseBody(size_t size, bool end_of_stream) override {
    if (!note_) {
      return FilterDataStatus::Continue;
    }
    if (!end_of_stream) {
      return FilterDataStatus::StopIterationAndBuffer;
    }
    std::string note = "-- cpp saw " + std::to_string(size) + " bytes\n";
    setBuffer(WasmBufferType::HttpResponseBody, size, 0, note);
    return FilterDataStatus::Continue;
  }

private:
  // Adds one to the shared counter, retrying when another worker won the race.
  static uint64_t countHit() {
    for (;;) {
      WasmDataPtr value;
      uint32_t cas = 0;
      uint64_t hits = 0;
      if (getSharedData("cpp_hits", &value, &cas) == WasmResult::Ok) {
        hits = std::stoull(value->toString());
      }
      hits += 1;
      if (setSharedData("cpp_hits", std::to_string(hits), cas) == WasmResult::Ok) {
        return hits;
      }
    }
  }

  uint64_t hits_ = 0;
  bool note_ = false;
};

static RegisterContextFactory register_Tag(CONTEXT_FACTORY(Tag), ROOT_FACTORY(TagRoot), "cpp_tag");
