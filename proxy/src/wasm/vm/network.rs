//! Network (TCP) filter callbacks: a new connection, data both ways, its close and end.

use super::*;

impl PluginVm {
    pub fn on_new_connection(&mut self, context: u32) -> Result<i32, VmFailure> {
        let Some(f) = &self.callbacks.new_connection else {
            return Ok(0);
        };
        invoke(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            f,
            context,
            context as i32,
            "proxy_on_new_connection",
        )
    }

    /// TCP data one way: `downstream` is client → upstream (`proxy_on_downstream_data`).
    pub fn on_data(
        &mut self,
        downstream: bool,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, VmFailure> {
        if downstream {
            self.data_callback(
                |c| &c.downstream_data,
                "proxy_on_downstream_data",
                context,
                size,
                end_of_stream,
            )
        } else {
            self.data_callback(
                |c| &c.upstream_data,
                "proxy_on_upstream_data",
                context,
                size,
                end_of_stream,
            )
        }
    }

    /// A side of a TCP connection closed; `peer` is 0 unknown, 1 local, 2 remote.
    pub fn on_connection_close(
        &mut self,
        downstream: bool,
        context: u32,
        peer: u32,
    ) -> Result<(), VmFailure> {
        let (callback, name) = if downstream {
            (
                &self.callbacks.downstream_close,
                "proxy_on_downstream_connection_close",
            )
        } else {
            (
                &self.callbacks.upstream_close,
                "proxy_on_upstream_connection_close",
            )
        };
        let Some(f) = callback else { return Ok(()) };
        invoke(
            &mut self.store,
            self.spec.callback_deadline_ticks,
            f,
            context,
            (context as i32, peer as i32),
            name,
        )
    }

    /// Ends a TCP connection context in Envoy's order for network filters: `on_done`,
    /// `on_log`, `on_delete`.
    pub fn finish_connection(&mut self, context: u32) -> Result<(), VmFailure> {
        self.end_context(context, EndOrder::Tcp)
    }
}
