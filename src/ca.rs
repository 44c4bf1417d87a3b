//! A private certificate authority for the API (`api.ca_file`, SPEC §3): the PEM bundle is read
//! and every certificate in it is parsed as a trust anchor, once by `check` (so a truncated or
//! wrong file is a configuration error with its place, exit 2, instead of a daemon that starts
//! and then fails every restart) and again when the sender builds its HTTP client.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The certificates of the PEM bundle at `path`, each checked to be usable as a trust anchor.
/// Errors are one line naming what is wrong: unreadable, not PEM, no certificate, or which
/// certificate (1-based) does not parse.
pub fn load(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    parse(&pem)
}

/// [`load`] on bytes already read.
pub fn parse(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let der =
            item.map_err(|e| format!("is not a valid PEM file (certificate {}: {e})", i + 1))?;
        let mut store = rustls::RootCertStore::empty();
        store
            .add(der.clone())
            .map_err(|e| format!("certificate {} is not a usable CA certificate: {e}", i + 1))?;
        certs.push(der);
    }
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA made once with `openssl req -x509 -newkey ec -pkeyopt
    /// ec_paramgen_curve:P-256 -nodes -days 36500 -subj /CN=enectiva-collector-test-ca`.
    const CA: &str = include_str!("../tests/data/tls/test-ca.pem");

    #[test]
    fn a_good_bundle_gives_its_certificates() {
        assert_eq!(parse(CA.as_bytes()).map(|c| c.len()), Ok(1));
        let two = format!("{CA}\n{CA}");
        assert_eq!(parse(two.as_bytes()).map(|c| c.len()), Ok(2));
    }

    #[test]
    fn broken_bundles_are_named() {
        let cut = &CA[..CA.len() / 2];
        assert!(parse(cut.as_bytes()).is_err(), "truncated PEM accepted");
        assert!(
            parse(b"-----BEGIN CERTIFICATE-----\n")
                .unwrap_err()
                .contains("PEM")
        );
        assert!(parse(b"").unwrap_err().contains("no PEM certificate"));
        assert!(
            parse(b"\x30\x82\x01\x0a binary DER")
                .unwrap_err()
                .contains("no PEM certificate")
        );
        let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        assert!(
            parse(junk.as_bytes())
                .unwrap_err()
                .contains("certificate 1 is not a usable CA certificate")
        );
    }
}
