//! `network create|ls|rm|inspect`, and the network options of `create` and `run`.

use std::process::ExitCode;

use bulkhead_runtime::network::{self, NetworkOptions};
use clap::{Args, Subcommand};

use super::output::{table, Format};
use crate::Cli;

/// The network options of `create` and `run` (flattened into their arguments).
#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// bridge (the default network), none (only lo), or a network made with `network create`.
    #[arg(long = "network", alias = "net", env = "BULKHEAD_NETWORK", default_value = "bridge")]
    pub network: String,
    /// Publish a container port on the host: [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp].
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:CONTAINER[/PROTO]")]
    pub publish: Vec<String>,
    /// Publish every port the image exposes, each on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// A name server for the container's /etc/resolv.conf (replaces the host's).
    #[arg(long)]
    pub dns: Vec<String>,
    /// An extra /etc/hosts line: NAME:IP.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
}

impl NetworkArgs {
    pub fn options(&self) -> NetworkOptions {
        NetworkOptions {
            mode: self.network.clone(),
            publish: self.publish.clone(),
            publish_all: self.publish_all,
            dns: self.dns.clone(),
            add_hosts: self.add_host.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct NetworkCommand {
    #[command(subcommand)]
    pub action: NetworkAction,
}

#[derive(Debug, Subcommand)]
pub enum NetworkAction {
    /// Create a bridge network; its containers reach each other by name, and no other network.
    Create {
        name: String,
        /// Its subnet in CIDR form (default: the first free /24 of 172.31.0.0/16).
        #[arg(long)]
        subnet: Option<String>,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove networks (none of their containers may exist).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show networks and their containers as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn run(cli: &Cli, command: &NetworkCommand) -> anyhow::Result<ExitCode> {
    let paths = cli.paths();
    match &command.action {
        NetworkAction::Create { name, subnet } => {
            let created = network::create_network(&paths, name, subnet.as_deref())?;
            println!("{}", created.id);
        }
        NetworkAction::Ls { quiet, format } => {
            let networks = network::list(&paths)?;
            if *quiet {
                for n in &networks {
                    println!("{}", n.network.name);
                }
            } else if *format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&networks)?);
            } else {
                let mut rows: Vec<Vec<String>> = networks
                    .iter()
                    .map(|n| {
                        vec![
                            n.network.id.clone(),
                            n.network.name.clone(),
                            n.network.driver.clone(),
                            n.network.subnet.to_string(),
                            n.network.bridge.clone(),
                            n.containers.len().to_string(),
                        ]
                    })
                    .collect();
                rows.push(vec!["-".into(), "none".into(), "null".into(), "-".into(), "-".into(), "-".into()]);
                print!(
                    "{}",
                    table(&["NETWORK ID", "NAME", "DRIVER", "SUBNET", "BRIDGE", "CONTAINERS"], &rows)
                );
            }
        }
        NetworkAction::Rm { names } => {
            let mut failed = false;
            for name in names {
                match network::remove_network(&paths, name) {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("bulkhead: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        NetworkAction::Inspect { names } => {
            let all = network::list(&paths)?;
            let mut out = Vec::new();
            for name in names {
                let found =
                    all.iter().find(|n| &n.network.name == name || n.network.id.starts_with(name.as_str()));
                match found {
                    Some(n) => out.push(n),
                    None => anyhow::bail!("network {name} not found"),
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
