//! HTTP stream callbacks: headers, bodies and trailers of a stream context, its end, and
//! whether it waits for a call it made.

use super::*;

impl PluginVm {
    pub fn on_request_headers(
        &mut self,
        context: u32,
        count: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        let callback = self.callbacks.request_headers.as_ref();
        headers(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            callback,
            context,
            count,
            end_of_stream,
            "proxy_on_request_headers",
        )
    }

    pub fn on_response_headers(
        &mut self,
        context: u32,
        count: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        let callback = self.callbacks.response_headers.as_ref();
        headers(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            callback,
            context,
            count,
            end_of_stream,
            "proxy_on_response_headers",
        )
    }

    pub fn on_request_body(
        &mut self,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        self.body(false, context, size, end_of_stream)
    }

    pub fn on_response_body(
        &mut self,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        self.body(true, context, size, end_of_stream)
    }

    fn body(
        &mut self,
        response: bool,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        if response {
            self.data_callback(
                |c| &c.response_body,
                "proxy_on_response_body",
                context,
                size,
                end_of_stream,
            )
        } else {
            self.data_callback(
                |c| &c.request_body,
                "proxy_on_request_body",
                context,
                size,
                end_of_stream,
            )
        }
    }

    pub fn on_request_trailers(&mut self, context: u32, count: usize) -> Result<i32, VmFailure> {
        self.trailers(false, context, count)
    }

    pub fn on_response_trailers(&mut self, context: u32, count: usize) -> Result<i32, VmFailure> {
        self.trailers(true, context, count)
    }

    fn trailers(&mut self, response: bool, context: u32, count: usize) -> Result<i32, VmFailure> {
        let (callback, name) = if response {
            (
                &self.callbacks.response_trailers,
                "proxy_on_response_trailers",
            )
        } else {
            (
                &self.callbacks.request_trailers,
                "proxy_on_request_trailers",
            )
        };
        let Some(f) = callback else { return Ok(0) };
        invoke(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            f,
            context,
            (context as i32, count as i32),
            name,
        )
    }

    /// Ends a stream context the way Envoy does for HTTP: `on_log`, `on_done`, `on_delete`.
    /// Whether stream `context` made an HTTP or gRPC call that has not been answered yet.
    pub fn awaits_call(&self, context: u32) -> bool {
        self.store
            .data()
            .call_owners
            .values()
            .any(|owner| *owner == context)
    }

    pub fn finish_stream(&mut self, context: u32) -> Result<(), VmFailure> {
        self.store
            .data_mut()
            .call_owners
            .retain(|_, owner| *owner != context);
        if let Some(stream) = self.stream(context) {
            stream.in_log = true;
            stream.request_headers.writable = false;
            stream.response_headers.writable = false;
            stream.response_trailers.writable = false;
            stream.request_trailers.pairs = None;
        }
        self.end_context(context, EndOrder::Http)
    }
}
