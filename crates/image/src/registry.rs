//! Pull and push over the OCI distribution API (via `oci-client`). Every manifest and blob is
//! checked against its digest and size before it lands in the store; a blob is streamed into a
//! temporary file and renamed into place only once verified, so an interrupted or corrupt
//! download leaves nothing behind.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use oci_spec::image::{ImageIndex, ImageManifest};

use crate::archive::check_image;
use crate::auth::{credentials, is_insecure, Credentials};
use crate::platform::{select, Platform};
use crate::store::MAX_DOCUMENT_SIZE;
use crate::{media, Digest, Error, Reference, Store};

/// Downloads (or uploads) running at once.
const CONCURRENCY: usize = 3;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Use plain HTTP (also enabled per registry by `login --insecure`).
    pub insecure: bool,
    /// Platform picked from multi-platform indexes (default linux/amd64).
    pub platform: Platform,
    /// Credentials overriding the stored ones.
    pub credentials: Option<Credentials>,
    /// Show progress on stderr when it is a terminal.
    pub progress: bool,
}

/// The outcome of a pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference recorded in the store.
    pub reference: Reference,
    /// The image manifest digest.
    pub digest: Digest,
    /// The index it was selected from, if any.
    pub index_digest: Option<Digest>,
    /// Bytes downloaded (0 when everything was already present).
    pub downloaded: u64,
}

fn registry_err(reference: &Reference, reason: impl std::fmt::Display) -> Error {
    Error::Registry { registry: reference.registry().to_owned(), reason: reason.to_string() }
}

struct Session {
    client: Client,
    auth: RegistryAuth,
    remote: oci_client::Reference,
    reference: Reference,
    runtime: tokio::runtime::Runtime,
}

impl Session {
    fn new(store: &Store, reference: &Reference, opts: &RegistryOptions) -> Result<Session, Error> {
        let registry = reference.registry();
        let insecure = opts.insecure || is_insecure(store, registry)?;
        let protocol = if insecure {
            ClientProtocol::HttpsExcept(vec![registry.to_owned()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            max_concurrent_download: CONCURRENCY,
            max_concurrent_upload: CONCURRENCY,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            use_monolithic_push: true,
            ..Default::default()
        };
        let creds = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None => credentials(store, registry)?,
        };
        let auth = match creds {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        let remote = match (reference.digest(), reference.tag()) {
            (Some(d), _) => oci_client::Reference::with_digest(
                registry.to_owned(),
                reference.repository().to_owned(),
                d.to_string(),
            ),
            (None, Some(t)) => oci_client::Reference::with_tag(
                registry.to_owned(),
                reference.repository().to_owned(),
                t.to_owned(),
            ),
            (None, None) => {
                return Err(Error::Invalid(format!("reference {reference} names neither tag nor digest")))
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid(format!("starting the I/O runtime: {e}")))?;
        Ok(Session { client: Client::new(config), auth, remote, reference: reference.clone(), runtime })
    }

    fn at_digest(&self, digest: &Digest) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.remote.registry().to_owned(),
            self.remote.repository().to_owned(),
            digest.to_string(),
        )
    }

    /// Fetches a manifest or index by reference, checking it hashes to what was asked for.
    fn fetch_manifest(
        &self,
        target: &oci_client::Reference,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest), Error> {
        let accepted =
            [media::OCI_MANIFEST, media::DOCKER_MANIFEST, media::OCI_INDEX, media::DOCKER_MANIFEST_LIST];
        let (bytes, header_digest) = self
            .runtime
            .block_on(self.client.pull_manifest_raw(target, &self.auth, &accepted))
            .map_err(|e| registry_err(&self.reference, format!("fetching manifest {target}: {e}")))?;
        if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
            return Err(Error::TooLarge {
                what: format!("manifest {target}"),
                size: bytes.len() as u64,
                limit: MAX_DOCUMENT_SIZE,
            });
        }
        let actual = Digest::of(&bytes);
        if let Some(e) = expected {
            if *e != actual {
                return Err(Error::DigestMismatch {
                    what: format!("manifest {target}"),
                    expected: e.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        if !header_digest.is_empty()
            && header_digest.starts_with("sha256:")
            && header_digest != actual.as_str()
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest {target} (Docker-Content-Digest)"),
                expected: header_digest,
                actual: actual.to_string(),
            });
        }
        Ok((bytes.to_vec(), actual))
    }
}

/// Pulls `reference` into the store and records it. Blobs already present are not fetched.
pub fn pull(store: &Store, reference: &str, opts: &RegistryOptions) -> Result<Pulled, Error> {
    let reference = Reference::parse(reference)?;
    let session = Session::new(store, &reference, opts)?;
    let _gc = store.gc_lock(false)?;
    let (bytes, digest) = session.fetch_manifest(&session.remote, reference.digest())?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::json(format!("manifest of {reference}"), e))?;
    let media_type = value.get("mediaType").and_then(|m| m.as_str()).unwrap_or_default().to_owned();
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(registry_err(
            &reference,
            format!("{reference} uses Docker schema 1 manifests, which are not supported"),
        ));
    }
    let (manifest_bytes, manifest_digest, index) = if media::is_index(&media_type)
        || value.get("manifests").is_some()
    {
        let idx: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| Error::json(format!("index of {reference}"), e))?;
        let chosen = select(&idx, &opts.platform)
            .ok_or_else(|| registry_err(&reference, format!("{reference} has no {} image", opts.platform)))?;
        let (mb, md) = session.fetch_manifest(&session.at_digest(&chosen), Some(&chosen))?;
        (mb, md, Some((bytes, digest)))
    } else {
        (bytes, digest, None)
    };
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| Error::json(format!("manifest {manifest_digest}"), e))?;
    let mut wanted = vec![manifest.config().clone()];
    wanted.extend(manifest.layers().iter().cloned());
    let mut missing = Vec::new();
    for desc in &wanted {
        let d = Digest::parse(desc.digest().as_ref())?;
        let present = store.blob_size(&d).is_ok_and(|s| s == desc.size());
        if !present && !missing.iter().any(|(m, _): &(Digest, u64)| *m == d) {
            missing.push((d, desc.size()));
        }
    }
    let downloaded = download(store, &session, &missing, opts.progress)?;
    if let Some((ib, id)) = &index {
        store.write_blob(ib, Some(id))?;
    }
    store.write_blob(&manifest_bytes, Some(&manifest_digest))?;
    check_image(store, &manifest_digest)?;
    let index_digest = index.map(|(_, d)| d);
    store.set_reference(&reference, &manifest_digest, index_digest.as_ref())?;
    Ok(Pulled { reference, digest: manifest_digest, index_digest, downloaded })
}

fn download(store: &Store, session: &Session, blobs: &[(Digest, u64)], progress: bool) -> Result<u64, Error> {
    if blobs.is_empty() {
        return Ok(0);
    }
    let total: u64 = blobs.iter().map(|(_, s)| s).sum();
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let reporter = (progress && std::io::stderr().is_terminal()).then(|| {
        let (done, finished) = (done.clone(), finished.clone());
        let count = blobs.len();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                let d = done.load(Ordering::Relaxed);
                let rate = d as f64 / start.elapsed().as_secs_f64().max(0.001) / 1e6;
                eprint!(
                    "\rpulling {count} blobs: {:.1}/{:.1} MB ({rate:.1} MB/s)   ",
                    d as f64 / 1e6,
                    total as f64 / 1e6
                );
                let _ = std::io::stderr().flush();
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!();
        })
    });
    let result = session.runtime.block_on(async {
        let mut tasks = futures_util::stream::iter(blobs.iter().map(|(digest, size)| {
            let done = done.clone();
            async move { fetch_blob(store, session, digest, *size, &done).await }
        }))
        .buffer_unordered(CONCURRENCY);
        while let Some(r) = tasks.next().await {
            r?;
        }
        Ok::<(), Error>(())
    });
    finished.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    result?;
    Ok(total)
}

async fn fetch_blob(
    store: &Store,
    session: &Session,
    digest: &Digest,
    size: u64,
    done: &AtomicU64,
) -> Result<(), Error> {
    let target = session.at_digest(digest);
    let what = format!("blob {digest}");
    let mut stream = session
        .client
        .pull_blob_stream(&target, digest.as_str())
        .await
        .map_err(|e| registry_err(&session.reference, format!("fetching {what}: {e}")))?;
    let mut writer = store.blob_writer()?;
    while let Some(chunk) = stream.stream.next().await {
        let chunk =
            chunk.map_err(|e| registry_err(&session.reference, format!("downloading {what}: {e}")))?;
        if writer.size() + chunk.len() as u64 > size {
            return Err(Error::SizeMismatch {
                what,
                expected: size,
                actual: writer.size() + chunk.len() as u64,
            });
        }
        writer.write_all(&chunk).map_err(|e| Error::io("writing blob in", store.tmp_dir(), e))?;
        done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    writer.commit(Some(digest), Some(size), &what)?;
    Ok(())
}

/// Pushes the image `local` names to `remote` (default: the same reference). Blobs the
/// registry already has are skipped. Returns the manifest digest.
pub fn push(
    store: &Store,
    local: &str,
    remote: Option<&str>,
    opts: &RegistryOptions,
) -> Result<Digest, Error> {
    let (found, digest) = store.lookup(local)?;
    let target = match remote {
        Some(r) => Reference::parse(r)?,
        None => found,
    };
    if target.digest().is_some() {
        return Err(Error::Invalid(format!(
            "cannot push to {target}: a push target needs a tag, not a digest"
        )));
    }
    let manifest = check_image(store, &digest)?;
    let raw = store.read_blob(&digest, MAX_DOCUMENT_SIZE)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
    let session = Session::new(store, &target, opts)?;
    let mut blobs = vec![Digest::parse(manifest.config().digest().as_ref())?];
    for l in manifest.layers() {
        blobs.push(Digest::parse(l.digest().as_ref())?);
    }
    session.runtime.block_on(async {
        session
            .client
            .auth(&session.remote, &session.auth, oci_client::RegistryOperation::Push)
            .await
            .map_err(|e| registry_err(&target, format!("authenticating for push: {e}")))?;
        let mut tasks = futures_util::stream::iter(blobs.iter().map(|d| push_blob(store, &session, d)))
            .buffer_unordered(CONCURRENCY);
        while let Some(r) = tasks.next().await {
            r?;
        }
        let content_type = http::HeaderValue::from_str(&media_type).map_err(|_| {
            Error::Invalid(format!("manifest {digest} has an unusable media type {media_type:?}"))
        })?;
        session
            .client
            .push_manifest_raw(&session.remote, raw.clone(), content_type)
            .await
            .map_err(|e| registry_err(&target, format!("pushing manifest {digest}: {e}")))?;
        Ok::<(), Error>(())
    })?;
    Ok(digest)
}

async fn push_blob(store: &Store, session: &Session, digest: &Digest) -> Result<(), Error> {
    let exists = session
        .client
        .blob_exists(&session.remote, digest.as_str())
        .await
        .map_err(|e| registry_err(&session.reference, format!("checking blob {digest}: {e}")))?;
    if exists {
        return Ok(());
    }
    let size = store.blob_size(digest)?;
    let data = store.read_blob(digest, size)?;
    session
        .client
        .push_blob(&session.remote, data, digest.as_str())
        .await
        .map_err(|e| registry_err(&session.reference, format!("pushing blob {digest}: {e}")))?;
    Ok(())
}

/// Checks `creds` against `registry` and stores them (0600) if the registry accepts them.
pub fn login(store: &Store, registry: &str, creds: &Credentials, insecure: bool) -> Result<(), Error> {
    let probe = Reference::parse(&format!("{registry}/bulkhead-login-probe:latest"))?;
    let opts = RegistryOptions { insecure, credentials: Some(creds.clone()), ..Default::default() };
    let session = Session::new(store, &probe, &opts)?;
    session
        .runtime
        .block_on(session.client.catalog(&session.remote, &session.auth, Some(1), None))
        .map_err(|e| registry_err(&probe, format!("login as {} refused: {e}", creds.username)))?;
    crate::auth::store_credentials(store, probe.registry(), creds, insecure)
}
