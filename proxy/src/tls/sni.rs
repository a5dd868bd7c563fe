//! Which certificate a listener serves for the name a client asked for (SNI): exact names
//! first, then wildcards (`*.example.com` covers one label), then the listener's first
//! certificate, for clients that sent no name or a name none of them has.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::CertificateFacts;

#[derive(Debug)]
pub struct CertificatesByName {
    entries: Vec<Served>,
    exact: HashMap<String, usize>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, usize>,
}

#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    facts: Arc<CertificateFacts>,
}

impl CertificatesByName {
    /// `certificates` in the config's order with the names each serves; the first is the
    /// default. A name claimed twice goes to the first certificate that claims it.
    pub fn new(certificates: Vec<(Arc<CertifiedKey>, CertificateFacts, Vec<String>)>) -> Self {
        let mut by_name = Self {
            entries: Vec::with_capacity(certificates.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (index, (key, facts, names)) in certificates.into_iter().enumerate() {
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => by_name.wildcard.entry(parent.to_owned()).or_insert(index),
                    None => by_name.exact.entry(name).or_insert(index),
                };
            }
            by_name.entries.push(Served {
                key,
                facts: Arc::new(facts),
            });
        }
        by_name
    }

    fn index_for(&self, server_name: Option<&str>) -> usize {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return 0;
        };
        if let Some(index) = self.exact.get(&name) {
            return *index;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .copied()
            .unwrap_or(0)
    }

    /// The facts of the certificate served for `server_name`.
    pub fn facts_for(&self, server_name: Option<&str>) -> Option<Arc<CertificateFacts>> {
        let served = self.entries.get(self.index_for(server_name))?;
        Some(Arc::clone(&served.facts))
    }
}

impl ResolvesServerCert for CertificatesByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let served = self.entries.get(self.index_for(hello.server_name()))?;
        Some(Arc::clone(&served.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name(names: &[&[&str]]) -> CertificatesByName {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["x.test".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("der");
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).expect("signer");
        let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer));
        CertificatesByName::new(
            names
                .iter()
                .map(|names| {
                    (
                        Arc::clone(&certified),
                        CertificateFacts::default(),
                        names.iter().map(|n| (*n).to_owned()).collect(),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn exact_then_wildcard_then_the_first_certificate() {
        let served = by_name(&[
            &["default.test"],
            &["api.test", "*.apps.test"],
            &["web.apps.test"],
        ]);
        assert_eq!(served.index_for(Some("API.test")), 1);
        assert_eq!(served.index_for(Some("shop.apps.test")), 1);
        assert_eq!(
            served.index_for(Some("web.apps.test")),
            2,
            "exact beats wildcard"
        );
        assert_eq!(
            served.index_for(Some("a.b.apps.test")),
            0,
            "a wildcard covers one label"
        );
        assert_eq!(served.index_for(Some("unknown.test")), 0);
        assert_eq!(served.index_for(None), 0);
    }
}
