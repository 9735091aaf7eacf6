//! `convoy tls init`: a cluster's own certificate authority and the certificates signed by it,
//! in one directory: what `convoy dev` makes for its throwaway cluster, and what a small
//! cluster without a PKI of its own starts from (as `kubeadm init` makes a cluster's).
//!
//! - `ca.pem`, `ca.key`: the authority. Clients trust `ca.pem` (`CONVOY_TLS_CA`); keep
//!   `ca.key` offline once the certificates are made.
//! - `coordinator.pem`, `coordinator.key`: the coordinators' server certificate, valid for
//!   every `--host` given (names and IP addresses; `localhost` and `127.0.0.1` always).
//! - `worker.pem`, `worker.key`: a client certificate for worker daemons, for a coordinator
//!   that admits only workers holding one (`--tls-client-ca`).
//!
//! Keys are written with mode 0600.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use convoy_service::secret_file;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The files of a cluster's PKI in `dir`.
pub struct Pki {
    pub ca: PathBuf,
    pub coordinator_cert: PathBuf,
    pub coordinator_key: PathBuf,
    pub worker_cert: PathBuf,
    pub worker_key: PathBuf,
}

impl Pki {
    pub fn in_dir(dir: &Path) -> Pki {
        Pki {
            ca: dir.join("ca.pem"),
            coordinator_cert: dir.join("coordinator.pem"),
            coordinator_key: dir.join("coordinator.key"),
            worker_cert: dir.join("worker.pem"),
            worker_key: dir.join("worker.key"),
        }
    }
}

/// The calendar year now (to within a day: certificates' validity is counted in years).
fn this_year() -> i32 {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    1970 + (days * 400 / 146_097) as i32
}

/// Valid from the start of last year (clocks disagree) for `years`.
fn validity(params: &mut CertificateParams, years: i32) {
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

/// Makes the authority and its certificates in `dir` (created if missing), for `hosts`
/// besides `localhost` and `127.0.0.1`. Refuses to replace an authority already there.
pub fn init(dir: &Path, hosts: &[String]) -> Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = Pki::in_dir(dir);
    anyhow::ensure!(
        !pki.ca.exists(),
        "{} exists: a cluster's authority is made once (remove the directory to start over; \
         every certificate it signed stops being trusted)",
        pki.ca.display()
    );
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "convoy cluster authority");
    validity(&mut ca, 10);
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let sign = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| -> Result<_> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        validity(&mut p, 2);
        let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_pem, server_key) = sign(
        names,
        "convoy coordinator",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (worker_pem, worker_key) = sign(
        vec!["convoy-worker".into()],
        "convoy worker",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    write(&pki.ca, &ca_cert.pem())?;
    secret_file::write(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    write(&pki.coordinator_cert, &server_pem)?;
    secret_file::write(&pki.coordinator_key, &server_key)?;
    write(&pki.worker_cert, &worker_pem)?;
    secret_file::write(&pki.worker_key, &worker_key)?;
    Ok(pki)
}
