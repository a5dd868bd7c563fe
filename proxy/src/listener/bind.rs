//! Binding listener sockets: one `SO_REUSEPORT` socket per (listener, worker), so the kernel
//! spreads new connections over workers without a shared accept lock.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: cannot bind {address}: {source}")]
pub struct BindError {
    pub listener: String,
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `count` sockets to `address`. Port 0 is resolved by the first bind and the rest join
/// that same port, so every worker serves the one address tests and users are told about.
pub fn bind_reuseport(
    listener: &str,
    address: SocketAddr,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let error = |address, source| BindError {
        listener: listener.to_owned(),
        address,
        source,
    };
    let first = bind_one(address).map_err(|e| error(address, e))?;
    let bound = first.local_addr().map_err(|e| error(address, e))?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind_one(bound).map_err(|e| error(bound, e))?);
    }
    Ok(sockets)
}

fn bind_one(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_every_worker_the_same_port() {
        let sockets = bind_reuseport("t", "127.0.0.1:0".parse().unwrap(), 3).expect("binds");
        let ports: Vec<u16> = sockets
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|p| *p == ports[0]), "{ports:?}");
    }

    #[test]
    fn a_taken_address_names_the_listener() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let error = bind_reuseport("main", address, 1).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("listener \"main\": cannot bind {address}: ")),
            "{error}"
        );
    }
}
