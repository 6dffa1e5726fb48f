//! `info` and `check`: what this host can do.

use std::process::ExitCode;

use clap::Args;

use crate::Cli;

#[derive(Debug, Args)]
pub struct InfoArgs {}

#[derive(Debug, Args)]
pub struct CheckArgs {}

pub fn info(_cli: &Cli, _args: &InfoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("info: not built yet")
}

pub fn check(_cli: &Cli, _args: &CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("check: not built yet")
}
