//! `tap-cloud certs init`: a local certificate authority and the certificates for a demo or
//! a small deployment: one for the cloud's ingest endpoint and one per sensor (mTLS).
//! Private keys are written readable by the owner only, in a directory only the owner
//! may enter when `init` creates it.

use std::{
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// What `init` wrote.
#[derive(Debug)]
pub struct Issued {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// (sensor id, certificate, key)
    pub sensors: Vec<(String, PathBuf, PathBuf)>,
}

/// A key or certificate in place of whatever `path` held, a symlink included (see
/// [`crate::files::replace`]).
fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    crate::files::replace(path, contents.as_bytes(), if private { crate::files::PRIVATE } else { 0o644 })
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A day of slack for clocks that are a little behind.
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days);
}

/// Creates `dir/ca.pem` (+ `ca.key`), `dir/server.pem` (+ `.key`) valid for
/// `server_names` (host names or IP addresses), and `dir/sensor-ID.pem` (+ `.key`) per
/// sensor. Refuses to overwrite an existing CA.
pub fn init(dir: &Path, server_names: &[String], sensors: &[String]) -> anyhow::Result<Issued> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let ca_path = dir.join("ca.pem");
    if ca_path.exists() {
        bail!("{} exists: certs init creates a new authority; use another directory or remove it", ca_path.display());
    }
    for id in sensors {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bail!("sensor id {id:?}: use letters, digits, '-', '_' and '.'");
        }
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, "dctap local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params, 3650);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write_file(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    write_file(&ca_path, &ca_cert.pem(), false)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| -> anyhow::Result<(String, String)> {
        let mut params = CertificateParams::new(sans).with_context(|| format!("names of {cn}"))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![usage];
        validity(&mut params, 825);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };

    let (cert, key) = leaf(server_names.to_vec(), "dctap cloud", ExtendedKeyUsagePurpose::ServerAuth)?;
    let (server_cert, server_key) = (dir.join("server.pem"), dir.join("server.key"));
    write_file(&server_cert, &cert, false)?;
    write_file(&server_key, &key, true)?;
    let mut issued = Vec::new();
    for id in sensors {
        // The sensor id is also a DNS-style SAN, so the certificate names the sensor.
        let (cert, key) = leaf(vec![id.clone()], id, ExtendedKeyUsagePurpose::ClientAuth)?;
        let (c, k) = (dir.join(format!("sensor-{id}.pem")), dir.join(format!("sensor-{id}.key")));
        write_file(&c, &cert, false)?;
        write_file(&k, &key, true)?;
        issued.push((id.clone(), c, k));
    }
    Ok(Issued { ca: ca_path, server_cert, server_key, sensors: issued })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use crate::files::tests::{mode, TempDir};

    #[test]
    fn keys_are_private_whatever_was_at_their_paths() {
        let tmp = TempDir::new("certs-init");
        let dir = tmp.0.join("tls");
        std::fs::create_dir(&dir).unwrap();
        // Left by an earlier run, or by hand under a loose umask.
        for name in ["ca.key", "sensor-s1.key"] {
            std::fs::write(dir.join(name), "old").unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        // Planted to have the key written where its planter reads it.
        std::fs::create_dir(tmp.0.join("x")).unwrap();
        let target = tmp.0.join("x/target");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("server.key")).unwrap();

        let issued = super::init(&dir, &["localhost".into()], &["s1".into()]).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        for key in [dir.join("ca.key"), issued.server_key, issued.sensors[0].2.clone()] {
            assert!(std::fs::symlink_metadata(&key).unwrap().is_file(), "{}", key.display());
            assert_eq!(mode(&key), 0o600, "{}", key.display());
            assert!(std::fs::read_to_string(&key).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        }
    }

    #[test]
    fn a_directory_init_creates_is_the_owners_alone() {
        let tmp = TempDir::new("certs-dir");
        let dir = tmp.0.join("new/tls");
        super::init(&dir, &["localhost".into()], &[]).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }
}
