//! One module per group of verbs.

mod container;
mod host;
mod image;
mod kernel;
mod network;
mod output;

use std::process::ExitCode;

use clap::Subcommand;

use crate::Cli;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the host facts bulkhead depends on, without booting anything.
    Info(host::InfoArgs),
    /// Verify this host can run container VMs: boot one, talk to it, shut it down.
    Check(host::CheckArgs),
    /// Manage guest kernels (stored as OCI images).
    Kernel(kernel::KernelCommand),
    #[command(flatten)]
    Image(image::ImageVerb),
    #[command(flatten)]
    Container(container::ContainerVerb),
    /// Manage networks.
    Network(network::NetworkCommand),
}

impl Command {
    /// The hidden `monitor` verb: the long-lived supervisor of one container.
    pub fn is_monitor(&self) -> bool {
        matches!(self, Command::Container(container::ContainerVerb::Monitor(_)))
    }
}

pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Info(args) => host::info(cli, args),
        Command::Check(args) => host::check(cli, args),
        Command::Kernel(cmd) => kernel::run(cli, cmd),
        Command::Image(verb) => image::run(cli, verb),
        Command::Container(verb) => container::run(cli, verb),
        Command::Network(command) => network::run(cli, command),
    }
}
