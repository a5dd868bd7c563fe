//! Why a TLS handshake failed, as a short stable name: the `result` label of
//! `sluice_tls_handshakes_total` and the reason in the log.

/// The reason for a failed handshake (`error` came from the acceptor).
pub fn failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "closed_early",
            std::io::ErrorKind::InvalidData => "protocol_error",
            _ => "io_error",
        };
    };
    match tls {
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(problem) => match problem {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate_not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Revoked => "certificate_revoked",
            _ => "bad_certificate",
        },
        Error::PeerIncompatible(_) => "incompatible",
        Error::NoApplicationProtocol => "no_common_alpn",
        Error::AlertReceived(_) => "alert_from_client",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::PeerMisbehaved(_) => "protocol_error",
        _ => "other",
    }
}
