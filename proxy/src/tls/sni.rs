//! Which certificate a listener serves for the name a client asked for (SNI): the one that
//! lists the name (see `names.rs`), else the listener's first certificate, for clients that
//! sent no name or a name none of them has.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::CertificateFacts;
use super::names::NameTable;

#[derive(Debug)]
pub struct CertificatesByName {
    table: NameTable<Served>,
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
        let entries = certificates.into_iter().map(|(key, facts, names)| {
            let served = Served {
                key,
                facts: Arc::new(facts),
            };
            (served, names)
        });
        Self {
            table: NameTable::new(entries),
        }
    }

    fn index_for(&self, server_name: Option<&str>) -> usize {
        server_name
            .and_then(|name| self.table.index_of(name))
            .unwrap_or(0)
    }

    /// The facts of the certificate served for `server_name`.
    pub fn facts_for(&self, server_name: Option<&str>) -> Option<Arc<CertificateFacts>> {
        let served = self.table.entry(self.index_for(server_name))?;
        Some(Arc::clone(&served.facts))
    }
}

impl ResolvesServerCert for CertificatesByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let served = self.table.entry(self.index_for(hello.server_name()))?;
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
    fn a_listed_name_gets_its_certificate_and_anything_else_the_first() {
        let served = by_name(&[&["default.test"], &["api.test", "*.apps.test"]]);
        assert_eq!(served.index_for(Some("shop.apps.test")), 1);
        assert_eq!(served.index_for(Some("unknown.test")), 0);
        assert_eq!(served.index_for(None), 0);
    }
}
