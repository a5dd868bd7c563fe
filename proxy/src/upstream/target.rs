//! What a cluster's `endpoints:` entry names: an IP address with a port, or a host name with a
//! port that is resolved (and re-resolved) through DNS.

use std::net::SocketAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointTarget {
    Address(SocketAddr),
    Host { name: String, port: u16 },
}

// === impl EndpointTarget ===

impl EndpointTarget {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(address) = text.parse::<SocketAddr>() {
            return Ok(Self::Address(address));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} needs a port, as in host:8080"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?} has an invalid port {port:?}"))?;
        let valid_host = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !valid_host {
            return Err(format!("{text:?} has an invalid host name {host:?}"));
        }
        Ok(Self::Host {
            name: host.to_owned(),
            port,
        })
    }

    /// Every address the target stands for right now. IPv4 answers win when there are any
    /// (Envoy's `V4_PREFERRED`): `localhost` often resolves to `::1` too, where a service
    /// bound to 127.0.0.1 is not listening.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Self::Address(address) => Ok(vec![*address]),
            Self::Host { name, port } => {
                let all: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), *port))
                    .await?
                    .collect();
                Ok(prefer_ipv4(all))
            }
        }
    }
}

fn prefer_ipv4(addresses: Vec<SocketAddr>) -> Vec<SocketAddr> {
    if addresses.iter().any(SocketAddr::is_ipv4) {
        addresses.into_iter().filter(SocketAddr::is_ipv4).collect()
    } else {
        addresses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_host_names_parse() {
        assert_eq!(
            EndpointTarget::parse("127.0.0.1:80").unwrap(),
            EndpointTarget::Address("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            EndpointTarget::parse("[::1]:80").unwrap(),
            EndpointTarget::Address("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            EndpointTarget::parse("api.internal:8080").unwrap(),
            EndpointTarget::Host {
                name: "api.internal".into(),
                port: 8080
            }
        );
        assert!(
            EndpointTarget::parse("api.internal")
                .unwrap_err()
                .contains("needs a port")
        );
        assert!(
            EndpointTarget::parse("api:http")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(
            EndpointTarget::parse("a b:80")
                .unwrap_err()
                .contains("invalid host")
        );
    }

    #[test]
    fn ipv4_answers_are_preferred() {
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(prefer_ipv4(vec![v6, v4]), vec![v4]);
        assert_eq!(prefer_ipv4(vec![v6]), vec![v6]);
    }

    #[tokio::test]
    async fn localhost_resolves() {
        let target = EndpointTarget::parse("localhost:80").unwrap();
        let addresses = target.resolve().await.expect("localhost resolves");
        assert!(
            addresses
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 80)
        );
    }
}
