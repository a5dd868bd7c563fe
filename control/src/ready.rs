//! `GET /ready` on the control port (HTTP/1.1 or HTTP/2, beside the gRPC API), for load
//! balancers and orchestrators: 200 `ready` while the replica can reach its store, 503
//! `not ready: store unavailable: ...` while it cannot. A replica that is not ready still
//! serves its last snapshot to subscribed proxies; it cannot take changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::store::Store;

/// Answers `/ready` itself and passes every other request on.
#[derive(Clone)]
pub struct ReadyLayer {
    store: Arc<Store>,
}

#[derive(Clone)]
pub struct ReadyService<S> {
    inner: S,
    store: Arc<Store>,
}

impl ReadyLayer {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for ReadyLayer {
    type Service = ReadyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadyService {
            inner,
            store: Arc::clone(&self.store),
        }
    }
}

type Answer<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S> Service<Request<Body>> for ReadyService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Answer<S::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.uri().path() != "/ready" {
            return Box::pin(self.inner.call(request));
        }
        let store = Arc::clone(&self.store);
        Box::pin(async move {
            // Unauthenticated: the answer names no member address; the log has the details.
            let (status, text): (StatusCode, &'static str) = match store.reachable().await {
                Ok(()) => (StatusCode::OK, "ready\n"),
                Err(error) => {
                    tracing::warn!(%error, "not ready");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: store unavailable (etcd does not answer; see the replica's log)\n",
                    )
                }
            };
            let body = Body::new(Full::new(Bytes::from_static(text.as_bytes())));
            let mut response = Response::new(body);
            *response.status_mut() = status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            Ok(response)
        })
    }
}
