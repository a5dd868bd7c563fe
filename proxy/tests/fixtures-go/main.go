// A filter built with the Go Proxy-Wasm SDK (proxy-wasm-go-sdk, upstream Go's wasip1 reactor),
// run by proxy/tests/e2e/other_sdks.rs and benches/envoy_diff.sh. Meant for the root id
// `go_tag`, though the SDK serves every root id with the same contexts.
//
//   - It stamps the plugin configuration, read once when the plugin starts, on responses
//     (x-go-tag), and tells the upstream the path it saw (x-go-seen) and its plugin_name
//     property (x-go-plugin).
//   - It counts requests in shared data with compare-and-swap (x-go-hits on the response).
//   - For paths under /note, it appends a line with the body's size to the response body
//     (buffered whole).
//   - It answers /deny itself: 403 with gRPC status 7 (PERMISSION_DENIED), which only a gRPC
//     request gets as gRPC.
//
// Rebuild with build.sh; the built go_tag.wasm is committed.
package main

import (
	"errors"
	"strconv"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

// The module is a reactor: the host calls its exports, main never runs.
func main() {}

func init() {
	proxywasm.SetVMContext(&vm{})
}

// === vm: one per module instance ===

type vm struct {
	types.DefaultVMContext
}

func (*vm) NewPluginContext(uint32) types.PluginContext {
	return &plugin{}
}

// === plugin: the root context, holding the configuration ===

type plugin struct {
	types.DefaultPluginContext
	tag string
}

func (p *plugin) OnPluginStart(size int) types.OnPluginStartStatus {
	if size > 0 {
		config, err := proxywasm.GetPluginConfiguration()
		if err != nil {
			proxywasm.LogCriticalf("go_tag: no plugin configuration: %v", err)
			return types.OnPluginStartStatusFailed
		}
		p.tag = string(config)
	}
	return types.OnPluginStartStatusOK
}

func (p *plugin) NewHttpContext(uint32) types.HttpContext {
	return &stream{plugin: p}
}

// === stream: one per request ===

type stream struct {
	types.DefaultHttpContext
	plugin *plugin
	hits   uint64
	note   bool
}

func (s *stream) OnHttpRequestHeaders(int, bool) types.Action {
	path, err := proxywasm.GetHttpRequestHeader(":path")
	if err != nil {
		proxywasm.LogErrorf("go_tag: no :path: %v", err)
		return types.ActionContinue
	}
	if path == "/deny" {
		if err := proxywasm.SendHttpResponse(403, nil, []byte("no entry\n"), 7); err != nil {
			proxywasm.LogErrorf("go_tag: local reply failed: %v", err)
		}
		return types.ActionPause
	}
	_ = proxywasm.AddHttpRequestHeader("x-go-seen", path)
	s.note = strings.HasPrefix(path, "/note")
	if name, err := proxywasm.GetProperty([]string{"plugin_name"}); err == nil {
		_ = proxywasm.AddHttpRequestHeader("x-go-plugin", string(name))
	}
	s.hits = countHit()
	return types.ActionContinue
}

func (s *stream) OnHttpResponseHeaders(int, bool) types.Action {
	_ = proxywasm.AddHttpResponseHeader("x-go-tag", s.plugin.tag)
	_ = proxywasm.AddHttpResponseHeader("x-go-hits", strconv.FormatUint(s.hits, 10))
	if s.note {
		// The body grows below: the length the upstream gave no longer holds.
		_ = proxywasm.RemoveHttpResponseHeader("content-length")
	}
	proxywasm.LogInfo("go filter tagged a response")
	return types.ActionContinue
}

func (s *stream) OnHttpResponseBody(size int, endOfStream bool) types.Action {
	if !s.note {
		return types.ActionContinue
	}
	if !endOfStream {
		// Pausing here buffers the body until its end.
		return types.ActionPause
	}
	line := "-- go saw " + strconv.Itoa(size) + " bytes\n"
	if err := proxywasm.AppendHttpResponseBody([]byte(line)); err != nil {
		proxywasm.LogErrorf("go_tag: append failed: %v", err)
	}
	return types.ActionContinue
}

// countHit adds one to the shared counter and returns it, retrying when another VM won the
// race. An unreadable counter starts again from zero.
func countHit() uint64 {
	for {
		var hits uint64
		value, cas, err := proxywasm.GetSharedData("go_hits")
		if err == nil {
			hits, _ = strconv.ParseUint(string(value), 10, 64)
		} else if !errors.Is(err, types.ErrorStatusNotFound) {
			proxywasm.LogErrorf("go_tag: shared data: %v", err)
			return 0
		}
		hits++
		err = proxywasm.SetSharedData("go_hits", []byte(strconv.FormatUint(hits, 10)), cas)
		if err == nil {
			return hits
		}
		if !errors.Is(err, types.ErrorStatusCasMismatch) {
			proxywasm.LogErrorf("go_tag: shared data: %v", err)
			return 0
		}
	}
}
