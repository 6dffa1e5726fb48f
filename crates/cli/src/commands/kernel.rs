//! `kernel ls|import|default`: guest kernels stored as OCI images.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bulkhead_image::{kernel, Store};
use clap::{Args, Subcommand};

use super::output::{human_size, table, Format};
use crate::Cli;

#[derive(Debug, Args)]
pub struct KernelCommand {
    #[command(subcommand)]
    pub action: KernelAction,
}

#[derive(Debug, Subcommand)]
pub enum KernelAction {
    /// List kernel images.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Import a vmlinux (x86_64 ELF) as a kernel image.
    Import {
        /// The vmlinux file; a `config` and `version` beside it are picked up.
        path: PathBuf,
        /// Reference to store it under (default bulkhead/kernel:<version>).
        #[arg(long)]
        name: Option<String>,
        /// The kernel's .config (default: `config` beside the vmlinux, if any).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Make it the default kernel.
        #[arg(long)]
        default: bool,
    },
    /// Make a kernel image the default for new containers.
    Default {
        /// Kernel reference or digest.
        reference: String,
    },
}

pub fn run(cli: &Cli, cmd: &KernelCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&cli.root).with_context(|| format!("opening store {}", cli.root.display()))?;
    match &cmd.action {
        KernelAction::Ls { format } => {
            let kernels = kernel::list(&store).context("listing kernels")?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&kernels)?),
                Format::Table => {
                    let rows: Vec<Vec<String>> = kernels
                        .iter()
                        .map(|k| {
                            let short = k.digest.strip_prefix("sha256:").unwrap_or(&k.digest);
                            vec![
                                k.reference.clone(),
                                k.version.clone(),
                                k.flavour.clone(),
                                short.chars().take(12).collect(),
                                human_size(k.size),
                                if k.is_default { "*".into() } else { String::new() },
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        table(&["REFERENCE", "VERSION", "FLAVOUR", "DIGEST", "SIZE", "DEFAULT"], &rows)
                    );
                }
            }
        }
        KernelAction::Import { path, name, config, default } => {
            let k = kernel::import(&store, path, config.as_deref(), name.as_deref())
                .context("importing kernel")?;
            if *default && !k.is_default {
                kernel::set_default(&store, &k.reference)
                    .with_context(|| format!("making {} the default kernel", k.reference))?;
            }
            println!("{} {}", k.reference, k.digest);
        }
        KernelAction::Default { reference } => {
            kernel::set_default(&store, reference)
                .with_context(|| format!("setting default kernel {reference}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
