//! Registry credentials and per-registry settings, kept in `<root>/auth.json` with mode 0600.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::store::sync_dir;
use crate::{Error, Store};

/// A username and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// Registries reached over plain HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    insecure: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AuthEntry {
    /// base64(`user:password`), as Docker stores it.
    auth: String,
}

fn path(store: &Store) -> PathBuf {
    store.root().join("auth.json")
}

fn read(store: &Store) -> Result<AuthFile, Error> {
    let p = path(store);
    match fs::read(&p) {
        Ok(d) => serde_json::from_slice(&d).map_err(|e| Error::json(p.display().to_string(), e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AuthFile::default()),
        Err(e) => Err(Error::io("reading", p, e)),
    }
}

fn write(store: &Store, file: &AuthFile) -> Result<(), Error> {
    let p = path(store);
    let tmp = store.root().join(".auth.json.tmp");
    let data = serde_json::to_vec_pretty(file).map_err(|e| Error::json("auth.json", e))?;
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io("creating", &tmp, e))?;
    f.write_all(&data).and_then(|()| f.sync_all()).map_err(|e| Error::io("writing", &tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("setting mode of", &tmp, e))?;
    fs::rename(&tmp, &p).map_err(|e| Error::io("renaming into", &p, e))?;
    sync_dir(store.root())
}

/// Stored credentials for `registry`, if any.
pub fn credentials(store: &Store, registry: &str) -> Result<Option<Credentials>, Error> {
    let file = read(store)?;
    let Some(entry) = file.auths.get(registry) else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&entry.auth)
        .map_err(|e| Error::Invalid(format!("auth.json: credentials for {registry} are not base64: {e}")))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| Error::Invalid(format!("auth.json: credentials for {registry} are not UTF-8")))?;
    let (u, p) = decoded.split_once(':').ok_or_else(|| {
        Error::Invalid(format!("auth.json: credentials for {registry} are not user:password"))
    })?;
    Ok(Some(Credentials { username: u.to_owned(), password: p.to_owned() }))
}

/// Records credentials for `registry` (and whether it speaks plain HTTP).
pub fn store_credentials(
    store: &Store,
    registry: &str,
    creds: &Credentials,
    insecure: bool,
) -> Result<(), Error> {
    let _lock = store.lock("auth.lock")?;
    let mut file = read(store)?;
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", creds.username, creds.password));
    file.auths.insert(registry.to_owned(), AuthEntry { auth });
    if insecure && !file.insecure.iter().any(|r| r == registry) {
        file.insecure.push(registry.to_owned());
    }
    write(store, &file)
}

/// Forgets credentials for `registry`; returns whether there were any.
pub fn remove_credentials(store: &Store, registry: &str) -> Result<bool, Error> {
    let _lock = store.lock("auth.lock")?;
    let mut file = read(store)?;
    let had = file.auths.remove(registry).is_some();
    if had {
        write(store, &file)?;
    }
    Ok(had)
}

/// Whether `registry` is configured for plain HTTP.
pub fn is_insecure(store: &Store, registry: &str) -> Result<bool, Error> {
    Ok(read(store)?.insecure.iter().any(|r| r == registry))
}

/// Marks (or unmarks) `registry` as reached over plain HTTP.
pub fn set_insecure(store: &Store, registry: &str, insecure: bool) -> Result<(), Error> {
    let _lock = store.lock("auth.lock")?;
    let mut file = read(store)?;
    file.insecure.retain(|r| r != registry);
    if insecure {
        file.insecure.push(registry.to_owned());
    }
    write(store, &file)
}
