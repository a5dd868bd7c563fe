//! What a registration must be: a service name, a concrete address callers can reach, label
//! keys, and a service the workload's join token allows.

use std::net::SocketAddr;

use super::{Registration, RegistrationError};

/// Service names: letters, digits, `-`, `_` and `.`, starting with a letter or digit, at most
/// 253 characters (a DNS name fits).
pub fn check_service_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a service name: letters, digits, '-', '_' and '.', starting with a letter or digit"
        ))
    }
}

/// Label keys: as service names, and `/` for prefixed keys (`topology.kubernetes.io/zone`).
pub fn check_label_key(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a label key: letters, digits, '-', '_', '.' and '/'"
        ))
    }
}

/// Checks what a proxy asks to register: names, addresses, and what its token allows.
pub fn check_registrations(
    requested: &[crate::proto::Registration],
    grant: &crate::tokens::TokenGrant,
) -> Result<Vec<Registration>, RegistrationError> {
    let mut checked = Vec::with_capacity(requested.len());
    for (index, registration) in requested.iter().enumerate() {
        let invalid = |reason: String| RegistrationError::Invalid { index, reason };
        check_service_name(&registration.service).map_err(invalid)?;
        let address: SocketAddr = registration
            .address
            .parse()
            .map_err(|_| invalid(format!("address {:?} is not IP:port", registration.address)))?;
        if address.ip().is_unspecified() || address.port() == 0 {
            return Err(invalid(format!(
                "address {address}: callers need a concrete IP and port to reach the workload"
            )));
        }
        for (key, value) in &registration.labels {
            check_label_key(key).map_err(invalid)?;
            if value.len() > 253 {
                return Err(invalid(format!("label {key:?}: its value is too long")));
            }
        }
        if !grant.allows_service(&registration.service) {
            return Err(RegistrationError::NotAllowed {
                index,
                workload: grant.workload.clone(),
                service: registration.service.clone(),
                allowed: grant.services.as_deref().unwrap_or_default().join(", "),
            });
        }
        checked.push(Registration {
            service: registration.service.clone(),
            address,
            labels: registration
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
    }
    Ok(checked)
}
