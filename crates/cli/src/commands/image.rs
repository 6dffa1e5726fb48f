//! Image verbs: pull, push, images, rmi, tag, load, save, import, login, logout, image inspect
//! and image prune. Each parses its arguments and calls `bulkhead-image`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_image::auth::{remove_credentials, Credentials};
use bulkhead_image::platform::Platform;
use bulkhead_image::registry::{self, RegistryOptions};
use bulkhead_image::{archive, disk, ImageKind, Reference, Store};
use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{human_size, table, Format};
use crate::Cli;

#[derive(Debug, Args)]
pub struct Transport {
    /// Use plain HTTP for this registry.
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageVerb {
    /// Pull an image from a registry.
    Pull {
        reference: String,
        /// Platform to select from a multi-platform image.
        #[arg(long, default_value = "linux/amd64")]
        platform: String,
        /// Print only the manifest digest.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        transport: Transport,
    },
    /// Push an image (or kernel image) to a registry.
    Push {
        /// Local image.
        reference: String,
        /// Destination, if not the same reference.
        destination: Option<String>,
        #[command(flatten)]
        transport: Transport,
    },
    /// List images.
    Images {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Include kernel images.
        #[arg(short, long)]
        all: bool,
    },
    /// Remove image references (blobs go with `image prune`).
    Rmi {
        #[arg(required = true)]
        references: Vec<String>,
        /// Remove every reference to an image named by id.
        #[arg(short, long)]
        force: bool,
    },
    /// Give an image another reference.
    Tag { source: String, target: String },
    /// Load images from a docker-archive, oci-archive or OCI layout directory.
    Load {
        #[arg(short, long)]
        input: PathBuf,
    },
    /// Save images as an oci-archive.
    Save {
        #[arg(short, long)]
        output: PathBuf,
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Create a one-layer image from a root filesystem tarball.
    Import { tarball: PathBuf, reference: String },
    /// Log in to a registry; credentials are kept in <root>/auth.json (mode 0600).
    Login {
        registry: String,
        #[arg(short, long)]
        username: String,
        /// Password (prefer --password-stdin).
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        transport: Transport,
    },
    /// Forget a registry's credentials.
    Logout { registry: String },
    /// Image management.
    Image(ImageCommand),
}

#[derive(Debug, Args)]
pub struct ImageCommand {
    #[command(subcommand)]
    action: ImageAction,
}

#[derive(Debug, Subcommand)]
enum ImageAction {
    /// Show an image's manifest, config and layers as JSON.
    Inspect {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Delete blobs, root disks and kernels no reference needs.
    Prune,
    /// Build (or find) an image's read-only root disk and print its path.
    Disk { reference: String },
    /// List images (same as `bulkhead images`).
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// As Docker does: the last name of an image that a container (running or not) was made from is
/// not removed without `--force`.
fn refuse_if_last_name_in_use(cli: &Cli, store: &Store, reference: &str) -> anyhow::Result<()> {
    let Ok(info) = store.resolve_image(reference) else {
        return Ok(()); // remove_image says what is wrong with it
    };
    let digest = info.digest.to_string();
    let names = store.images()?.iter().filter(|i| i.digest == digest).count();
    let by_name = info.reference.to_string() == reference
        || Reference::parse(reference).is_ok_and(|r| r.to_string() == info.reference.to_string());
    if names > 1 && by_name {
        return Ok(());
    }
    let users: Vec<String> = bulkhead_runtime::container::ops::list(&cli.paths(), true)?
        .into_iter()
        .filter(|c| c.config.image_digest == digest)
        .map(|c| c.config.name)
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "image {reference} is used by container {}; remove the container first or use --force",
        users.join(", ")
    )
}

fn open(cli: &Cli) -> anyhow::Result<Store> {
    Store::open(&cli.root).with_context(|| format!("opening store {}", cli.root.display()))
}

pub fn run(cli: &Cli, verb: &ImageVerb) -> anyhow::Result<ExitCode> {
    let store = open(cli)?;
    match verb {
        ImageVerb::Pull { reference, platform, quiet, transport } => {
            let platform = Platform::parse(platform)?;
            let opts = RegistryOptions {
                insecure: transport.insecure,
                platform,
                credentials: None,
                progress: !quiet,
            };
            let pulled =
                registry::pull(&store, reference, &opts).with_context(|| format!("pulling {reference}"))?;
            if *quiet {
                println!("{}", pulled.digest);
            } else {
                println!("{} {}", pulled.reference.familiar(), pulled.digest);
            }
        }
        ImageVerb::Push { reference, destination, transport } => {
            let opts = RegistryOptions { insecure: transport.insecure, ..Default::default() };
            let digest = registry::push(&store, reference, destination.as_deref(), &opts)
                .with_context(|| format!("pushing {reference}"))?;
            println!("{digest}");
        }
        ImageVerb::Images { format, all } => list(&store, *format, *all)?,
        ImageVerb::Rmi { references, force } => {
            let mut failed = false;
            for r in references {
                let in_use = if *force { Ok(()) } else { refuse_if_last_name_in_use(cli, &store, r) };
                match in_use.and_then(|()| store.remove_image(r, *force).map_err(anyhow::Error::from)) {
                    Ok(removed) => removed.iter().for_each(|r| println!("Untagged: {}", r.familiar())),
                    Err(e) => {
                        eprintln!("bulkhead: removing {r}: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        ImageVerb::Tag { source, target } => {
            store.tag(source, target).with_context(|| format!("tagging {source} as {target}"))?;
        }
        ImageVerb::Load { input } => {
            let loaded =
                archive::load(&store, input).with_context(|| format!("loading {}", input.display()))?;
            for l in loaded {
                println!("Loaded image: {} {}", l.reference.familiar(), l.digest);
            }
        }
        ImageVerb::Save { output, references } => {
            let refs: Vec<&str> = references.iter().map(String::as_str).collect();
            archive::save(&store, &refs, output)
                .with_context(|| format!("saving to {}", output.display()))?;
        }
        ImageVerb::Import { tarball, reference } => {
            let digest = archive::import(&store, tarball, reference)
                .with_context(|| format!("importing {}", tarball.display()))?;
            println!("{digest}");
        }
        ImageVerb::Login { registry: host, username, password, password_stdin, transport } => {
            let password = match (password, password_stdin) {
                (Some(p), _) => p.clone(),
                (None, true) => {
                    let mut p = String::new();
                    std::io::stdin().read_to_string(&mut p).context("reading the password from stdin")?;
                    p.trim_end_matches(['\n', '\r']).to_owned()
                }
                (None, false) => bail!("login: give --password-stdin (or --password)"),
            };
            let creds = Credentials { username: username.clone(), password };
            registry::login(&store, host, &creds, transport.insecure)
                .with_context(|| format!("logging in to {host}"))?;
            println!("Login Succeeded");
        }
        ImageVerb::Logout { registry: host } => {
            if remove_credentials(&store, host).with_context(|| format!("logging out of {host}"))? {
                println!("Removing login credentials for {host}");
            } else {
                println!("Not logged in to {host}");
            }
        }
        ImageVerb::Image(cmd) => match &cmd.action {
            ImageAction::Inspect { references } => {
                let mut out = Vec::new();
                for r in references {
                    out.push(inspect(&store, r).with_context(|| format!("inspecting {r}"))?);
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            ImageAction::Prune => {
                let in_use = bulkhead_runtime::container::ops::images_in_use(&cli.paths())
                    .context("listing the images containers use")?;
                let report = store.prune_keeping(&in_use).context("pruning the store")?;
                println!(
                    "Deleted {} blobs and {} cached disks/kernels, {} reclaimed",
                    report.blobs,
                    report.caches,
                    human_size(report.bytes)
                );
            }
            ImageAction::Disk { reference } => {
                let info =
                    store.resolve_image(reference).with_context(|| format!("resolving {reference}"))?;
                let path = disk::root_disk(&store, info.digest.as_str())
                    .with_context(|| format!("building root disk of {reference}"))?;
                println!("{}", path.display());
            }
            ImageAction::Ls { format } => list(&store, *format, false)?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn list(store: &Store, format: Format, all: bool) -> anyhow::Result<()> {
    let images: Vec<_> = store
        .images()
        .context("listing images")?
        .into_iter()
        .filter(|i| all || i.kind == ImageKind::Image)
        .collect();
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&images)?),
        Format::Table => {
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|i| {
                    vec![
                        i.repository.clone(),
                        i.tag.clone(),
                        i.id.trim_start_matches("sha256:").chars().take(12).collect(),
                        i.created.clone().unwrap_or_default(),
                        human_size(i.size),
                    ]
                })
                .collect();
            print!("{}", table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows));
        }
    }
    Ok(())
}

fn inspect(store: &Store, reference: &str) -> anyhow::Result<serde_json::Value> {
    let info = store.resolve_image(reference)?;
    let references: Vec<String> = store
        .list()?
        .into_iter()
        .filter(|e| e.digest == info.digest)
        .map(|e| e.reference.familiar())
        .collect();
    let layers: Vec<_> = info
        .manifest
        .layers()
        .iter()
        .map(|l| json!({ "digest": l.digest().to_string(), "size": l.size(), "mediaType": l.media_type().to_string() }))
        .collect();
    let size: u64 = info.manifest.layers().iter().map(|l| l.size()).sum();
    Ok(json!({
        "Id": info.config_digest.to_string(),
        "Digest": info.digest.to_string(),
        "RepoTags": references,
        "Reference": Reference::familiar(&info.reference),
        "Kind": info.kind,
        "Created": info.image_config.created(),
        "Architecture": info.image_config.architecture().to_string(),
        "Os": info.image_config.os().to_string(),
        "Size": size,
        "Config": info.config,
        "Layers": layers,
        "Annotations": info.manifest.annotations(),
    }))
}
