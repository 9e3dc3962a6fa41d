//! A throwaway PKI for TLS tests: a CA, a server certificate for `localhost`/`127.0.0.1`, a client
//! certificate, and a second, untrusted CA with its own server and client certificates, all
//! written as PEM files into a directory the test owns.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, SanType, SignatureAlgorithm,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The PEM files of one CA and what it signed.
#[derive(Debug, Clone)]
pub struct Authority {
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate for `localhost` and `127.0.0.1`, and its key (PKCS#8).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Client certificate (CN `gateway`, client-auth usage) and its EC key (PKCS#8).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another client certificate of this CA, with an RSA key (PKCS#8).
    pub rsa_client_cert: PathBuf,
    pub rsa_client_key: PathBuf,
}

/// A trusted and an untrusted authority, in one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The authority the gateway is told to trust.
    pub trusted: Authority,
    /// One it is not: its certificates must be refused.
    pub untrusted: Authority,
}

impl Pki {
    /// Generates both authorities into `dir` (fresh keys every time).
    pub fn generate(dir: &Path) -> Pki {
        Pki {
            trusted: authority(dir, "trusted"),
            untrusted: authority(dir, "untrusted"),
        }
    }
}

fn authority(dir: &Path, name: &str) -> Authority {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let write = |file: &str, text: &str| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    let ca = write("ca.pem", &ca_cert.pem());

    let leaf = |cn: &str, alg: &'static SignatureAlgorithm, server: bool| {
        let key = KeyPair::generate_for(alg).expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if server {
            params.subject_alt_names = vec![
                SanType::DnsName("localhost".try_into().expect("DNS name")),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key) = leaf("localhost", &PKCS_ECDSA_P256_SHA256, true);
    let (client_pem, client_key) = leaf("gateway", &PKCS_ECDSA_P256_SHA256, false);
    let (rsa_pem, rsa_key) = leaf("gateway-rsa", &PKCS_RSA_SHA256, false);
    Authority {
        ca,
        server_cert: write("server.pem", &server_pem),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_pem),
        client_key: write("client.key", &client_key),
        rsa_client_cert: write("rsa-client.pem", &rsa_pem),
        rsa_client_key: write("rsa-client.key", &rsa_key),
    }
}
