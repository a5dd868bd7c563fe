//! One attempt at the upstream: pick an endpoint, send within the deadlines, and turn what
//! came back (or the failure) into the answer the response filters see.

use std::net::SocketAddr;
use std::rc::Rc;

use http::{Request, Response};
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use super::{Answer, Attempt, Exchange, Failure};
use crate::admin::RouteStats;
use crate::http::body::{Completion, ProxyBody, UpstreamBody};
use crate::http::headers::remove_hop_by_hop;
use crate::http::local_reply::LocalReply;
use crate::http::upgrade::spawn_tunnel;
use crate::upstream::{UpstreamError, UpstreamResponse};

impl Exchange<'_> {
    /// One attempt: pick an endpoint (one not tried yet, when there is one), send, and run
    /// the response filters over what came back; they may ask for a replay instead.
    pub(super) async fn attempt(
        &self,
        attempt: &Attempt<'_>,
        request: Request<ProxyBody>,
        tried: &[SocketAddr],
        downstream_upgrade: Option<OnUpgrade>,
    ) -> Answer {
        let cluster = &attempt.target.cluster;
        let stats = &attempt.target.stats;
        // An attempt counts from here, even one that finds no endpoint: the host's attempt
        // limit holds whatever the filters ask.
        let per_try_timeout = self.chain.as_ref().and_then(|chain| {
            let chain = chain.borrow();
            let info = chain.info();
            info.upstream.set(None);
            info.upstream_failure.set(None);
            let mut replay = info.replay.borrow_mut();
            replay.start_attempt();
            replay.plan().and_then(|plan| plan.per_try_timeout)
        });
        // The cluster's circuit breaker: past max_requests in flight, 503 naming it.
        let request_slot = match cluster
            .load
            .admit_request(cluster.settings.limits.max_requests)
        {
            Ok(slot) => slot,
            Err(overflow) => {
                let error = UpstreamError::Overflow {
                    cluster: cluster.name.clone(),
                    overflow,
                };
                let reply = LocalReply::from_upstream(&cluster.name, &error);
                return self.upstream_failed(stats, reply).await;
            }
        };
        let key = cluster.hash_key(request.headers(), self.conn.peer);
        let Some(endpoint) = cluster.pick_avoiding(tried, key) else {
            let reply =
                LocalReply::no_healthy_upstream(&cluster.name, cluster.discovered_service());
            return self.upstream_failed(stats, reply).await;
        };
        let active = endpoint.begin_request();
        if let Some(chain) = &self.chain {
            chain.borrow().info().upstream.set(Some(endpoint.addr));
        }

        let pools = &self.conn.worker.pools;
        let sending = async {
            if downstream_upgrade.is_some() {
                let response = pools.send_upgrade(cluster, &endpoint, request).await?;
                Ok(UpstreamResponse {
                    response,
                    conn_return: None,
                })
            } else {
                pools.send(cluster, &endpoint, request).await
            }
        };
        // Only `ewma` balancing reads response latency; others skip the clock.
        let sent_at = cluster.tracks_latency().then(Instant::now);
        // The route's deadline spans every attempt; the per-try timeout is this one's.
        let per_try_at = per_try_timeout.map(|timeout| Instant::now() + timeout);
        let stop = match (attempt.deadline, per_try_at) {
            (Some(deadline), Some(per_try)) => Some(deadline.min(per_try)),
            (deadline, per_try) => deadline.or(per_try),
        };
        let outcome = match stop {
            Some(at) => match tokio::time::timeout_at(at, sending).await {
                Ok(result) => result.map_err(Failure::Upstream),
                Err(_elapsed) => match per_try_timeout {
                    Some(timeout) if attempt.deadline.is_none_or(|deadline| deadline > at) => {
                        Err(Failure::PerTryTimeout(timeout))
                    }
                    _ => Err(Failure::Timeout),
                },
            },
            None => sending.await.map_err(Failure::Upstream),
        };
        let UpstreamResponse {
            mut response,
            conn_return,
        } = match outcome {
            Ok(response) => {
                if let Some(sent_at) = sent_at {
                    endpoint.observe_latency(sent_at.elapsed(), cluster.now_ms());
                }
                response
            }
            Err(failure) => {
                // A filter that stopped the request body is why the exchange failed.
                if let Some(interruption) = self
                    .chain
                    .as_ref()
                    .and_then(|c| c.borrow_mut().take_interruption())
                {
                    return Answer::Deliver(self.interrupted(stats, interruption).await);
                }
                let reply = match failure {
                    Failure::Timeout => LocalReply::upstream_timeout(&cluster.name),
                    Failure::PerTryTimeout(timeout) => {
                        LocalReply::upstream_per_try_timeout(&cluster.name, timeout)
                    }
                    Failure::Upstream(error) => {
                        // The client's body broke the exchange: its fault, not the upstream's.
                        let client = self.scope.client_body_failure.borrow().clone();
                        if let Some(client) = client {
                            tracing::debug!(cluster = %cluster.name, %client, %error, "the request body failed");
                            let reply = LocalReply::from_client_body(&client);
                            return Answer::Deliver(self.local(stats, reply).await);
                        }
                        tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, %error, "upstream request failed");
                        LocalReply::from_upstream(&cluster.name, &error)
                    }
                };
                return self.upstream_failed(stats, reply).await;
            }
        };

        let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        remove_hop_by_hop(response.headers_mut(), switched);
        let mut active = Some(active);
        if switched && let Some(downstream) = downstream_upgrade {
            let upstream = hyper::upgrade::on(&mut response);
            spawn_tunnel(downstream, upstream, active.take());
        }
        self.scope.response_started.set(true);
        let (parts, body) = response.into_parts();
        let completion = Completion::new(stats.clone(), parts.status, self.started)
            .hold(Rc::clone(&attempt.guards));
        let body = UpstreamBody::new(
            body,
            attempt.deadline,
            attempt.idle_timeout,
            conn_return,
            completion,
            active,
            request_slot,
        );
        let response = Response::from_parts(parts, ProxyBody::Upstream(Box::new(body)));
        self.answer_attempt(response).await
    }

    /// An attempt that got no response: the proxy's reply goes through the response filters,
    /// which may replay the request; it is counted only if it is the answer.
    async fn upstream_failed(&self, stats: &RouteStats, reply: LocalReply) -> Answer {
        if let Some(chain) = &self.chain {
            chain
                .borrow()
                .info()
                .upstream_failure
                .set(Some(reply.reason.as_str()));
        }
        let (status, reason) = (reply.status, reply.reason);
        let answer = self
            .answer_attempt(reply.into_response(self.grpc_request))
            .await;
        if matches!(answer, Answer::Deliver(_)) {
            self.count_local(stats, status, reason);
        }
        answer
    }

    /// An attempt's answer through every response filter, which may replay the request.
    async fn answer_attempt(&self, response: Response<ProxyBody>) -> Answer {
        let Some(chain) = &self.chain else {
            return Answer::Deliver(Ok(response));
        };
        let last = chain.borrow().len().saturating_sub(1);
        self.answer(response, last, true).await
    }
}
