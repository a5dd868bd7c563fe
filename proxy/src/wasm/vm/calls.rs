//! What the guest asked the host to do outside a callback (HTTP and gRPC calls, gRPC
//! streams, a new tick period), and delivering their outcomes back to the root context.

use super::*;

impl PluginVm {
    /// Whether the guest asked for callouts, streams or a new tick period since the last look:
    /// after most callbacks it did not, and the owner need not take anything. Checks exactly
    /// what `take_pending_calls`, `take_pending_streams` and `take_tick_change` drain; a new
    /// kind of guest request must be added to both.
    pub fn has_guest_requests(&self) -> bool {
        let state = self.store.data();
        !state.pending_calls.is_empty() || !state.pending_streams.is_empty() || state.tick_changed
    }

    /// Callouts the guest asked for since the last look.
    pub fn take_pending_calls(&mut self) -> Vec<PendingCall> {
        std::mem::take(&mut self.store.data_mut().pending_calls)
    }

    /// Delivers a callout's outcome to the root context (`proxy_on_http_call_response`); the
    /// response is readable only during the callback, as in Envoy.
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        outcome: CallOutcome,
    ) -> Result<(), VmFailure> {
        let (counts, response, status) = match outcome {
            CallOutcome::Response(response) => {
                let counts = (
                    response.headers.len(),
                    response.body.len(),
                    response.trailers.len(),
                );
                (counts, Some(response), (0, Vec::new()))
            }
            // Envoy reports a broken-off call with code 11 (BROKEN_CONNECTION) and "reset".
            CallOutcome::Reset => ((0, 0, 0), None, (11, b"reset".to_vec())),
        };
        let state = self.store.data_mut();
        state.call_owners.remove(&token);
        state.call_response = response;
        state.call_status = status;
        let outcome = match &self.callbacks.http_call_response {
            Some(f) => {
                let root = self.root_id;
                let params = (
                    root as i32,
                    token as i32,
                    counts.0 as i32,
                    counts.1 as i32,
                    counts.2 as i32,
                );
                invoke(
                    &mut self.store,
                    self.spec.callback_deadline_ticks,
                    f,
                    root,
                    params,
                    "proxy_on_http_call_response",
                )
            }
            None => Ok(()),
        };
        self.store.data_mut().call_response = None;
        outcome
    }

    /// Delivers a unary gRPC call's result to the root context: `proxy_on_grpc_receive` with
    /// the message in buffer 5, or `proxy_on_grpc_close` with the status (message via
    /// `proxy_get_status`), as Envoy does.
    pub fn on_grpc_response(&mut self, token: u32, outcome: GrpcOutcome) -> Result<(), VmFailure> {
        self.store.data_mut().call_owners.remove(&token);
        // A call the guest cancelled (or closed) meanwhile has nobody to hear it.
        if self.store.data_mut().grpc_calls.remove(&token).is_none() {
            return Ok(());
        }
        let root = self.root_id;
        let ticks = self.spec.callback_deadline_ticks;
        let outcome = match outcome {
            GrpcOutcome::Message(message) => {
                let size = message.len() as i32;
                let state = self.store.data_mut();
                state.grpc_message = Some(message);
                state.call_status = (0, Vec::new());
                match &self.callbacks.grpc_receive {
                    Some(f) => invoke(
                        &mut self.store,
                        ticks,
                        f,
                        root,
                        (root as i32, token as i32, size),
                        "proxy_on_grpc_receive",
                    ),
                    None => Ok(()),
                }
            }
            GrpcOutcome::Closed { status, message } => {
                self.store.data_mut().call_status = (status, message);
                match &self.callbacks.grpc_close {
                    Some(f) => invoke(
                        &mut self.store,
                        ticks,
                        f,
                        root,
                        (root as i32, token as i32, status as i32),
                        "proxy_on_grpc_close",
                    ),
                    None => Ok(()),
                }
            }
        };
        self.store.data_mut().grpc_message = None;
        outcome
    }

    /// Gets a gRPC stream's next event to the root context, as Envoy does: the metadata in
    /// map 4 or 5 and a message in buffer 5, readable only during their callback; the close
    /// with its status and message via `proxy_get_status`. Returns whether the stream should
    /// go on: not after the close, nor once the guest cancelled it.
    pub fn on_grpc_stream_event(
        &mut self,
        token: u32,
        event: StreamEvent,
    ) -> Result<bool, VmFailure> {
        let state = self.store.data_mut();
        let Some(stream) = state.grpc_streams.get_mut(&token) else {
            return Ok(false);
        };
        let (root, ticks) = (self.root_id, self.spec.callback_deadline_ticks);
        let closed = matches!(event, StreamEvent::Close { .. });
        let (callback, name, count) = match event {
            StreamEvent::InitialMetadata(pairs) => {
                let count = pairs.len();
                state.grpc_metadata = Some((GRPC_INITIAL_METADATA, pairs));
                (
                    &self.callbacks.grpc_initial_metadata,
                    "proxy_on_grpc_receive_initial_metadata",
                    count,
                )
            }
            StreamEvent::Message(message) => {
                let size = message.len();
                state.grpc_message = Some(message);
                (&self.callbacks.grpc_receive, "proxy_on_grpc_receive", size)
            }
            StreamEvent::TrailingMetadata(pairs) => {
                let count = pairs.len();
                state.grpc_metadata = Some((GRPC_TRAILING_METADATA, pairs));
                (
                    &self.callbacks.grpc_trailing_metadata,
                    "proxy_on_grpc_receive_trailing_metadata",
                    count,
                )
            }
            StreamEvent::Close { status, message } => {
                stream.remote_closed = true;
                state.call_status = (status, message);
                (
                    &self.callbacks.grpc_close,
                    "proxy_on_grpc_close",
                    status as usize,
                )
            }
        };
        let outcome = match callback {
            Some(f) => invoke(
                &mut self.store,
                ticks,
                f,
                root,
                (root as i32, token as i32, count as i32),
                name,
            ),
            None => Ok(()),
        };
        let state = self.store.data_mut();
        state.grpc_metadata = None;
        state.grpc_message = None;
        outcome?;
        if closed {
            // Forgotten once both sides closed; a guest that has not closed its side still
            // may, and gets OK.
            if state
                .grpc_streams
                .get(&token)
                .is_some_and(|s| s.local_closed)
            {
                state.grpc_streams.remove(&token);
            }
            return Ok(false);
        }
        Ok(state.grpc_streams.contains_key(&token))
    }

    /// Streams the guest opened since the last look.
    pub fn take_pending_streams(&mut self) -> Vec<PendingStream> {
        std::mem::take(&mut self.store.data_mut().pending_streams)
    }

    /// The tick period if the guest changed it since the last look.
    pub fn take_tick_change(&mut self) -> Option<Option<std::time::Duration>> {
        let state = self.store.data_mut();
        std::mem::take(&mut state.tick_changed).then_some(state.tick_period)
    }
}
