// The Go module of go_tag.wasm. The SDK is required at the commit the committed module was built
// from; build.sh points it at a local checkout (a replace directive on a scratch copy of this
// file), so the build never fetches anything.
module sluice.test/go_tag

go 1.24

require github.com/proxy-wasm/proxy-wasm-go-sdk v0.0.0-20260105142703-44c7d5847745
