//! TLS passthrough: read a client's TLS hello without answering it, to learn the server name
//! it asks for, and keep the bytes so they can be sent on to the chosen upstream untouched.

use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A hello larger than this is refused rather than buffered.
const MAX_HELLO: usize = 16 * 1024;

/// Why no server name could be read.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    #[error("no TLS hello within {0:?}")]
    Timeout(Duration),
    #[error("the client closed the connection before its TLS hello")]
    Closed,
    #[error("not a TLS hello: {0}")]
    NotTls(String),
    #[error("the TLS hello is larger than {MAX_HELLO} bytes")]
    TooLarge,
    #[error("reading the TLS hello: {0}")]
    Io(#[from] std::io::Error),
}

impl PeekError {
    /// The short reason, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Closed => "closed_early",
            Self::NotTls(_) => "not_tls",
            Self::TooLarge => "hello_too_large",
            Self::Io(_) => "io_error",
        }
    }
}

/// Reads the client's hello from `stream`: the server name it asks for (`None` without SNI)
/// and every byte read, to forward first.
pub async fn read_server_name(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<(Option<String>, Vec<u8>), PeekError> {
    tokio::time::timeout(timeout, read_hello(stream))
        .await
        .map_err(|_elapsed| PeekError::Timeout(timeout))?
}

async fn read_hello(stream: &mut TcpStream) -> Result<(Option<String>, Vec<u8>), PeekError> {
    let mut acceptor = Acceptor::default();
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let count = stream.read(&mut chunk).await?;
        if count == 0 {
            return Err(PeekError::Closed);
        }
        read.extend_from_slice(&chunk[..count]);
        if read.len() > MAX_HELLO {
            return Err(PeekError::TooLarge);
        }
        let mut fresh = &chunk[..count];
        while !fresh.is_empty() {
            acceptor.read_tls(&mut fresh)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((name, read));
            }
            Ok(None) => {}
            Err((error, _alert)) => return Err(PeekError::NotTls(error.to_string())),
        }
    }
}
