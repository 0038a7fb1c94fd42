//! deploy-agent's command line: the configuration file and the flags shared with
//! deploy-proxy ([`deploy_common::cli::ServerArgs`]).

use clap::Parser;
use deploy_common::cli::ServerArgs;
use std::path::PathBuf;

/// deploy-agent: runs deploy orders (status, rlist, rsync, rkill, exec) on this host.
#[derive(Debug, Parser)]
#[command(name = "deploy-agent", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (INI).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/deploy/deploy_agent.ini"
    )]
    pub path: PathBuf,
    /// Print this agent's NATS key as the lines callers pin (`<name> <public key>`,
    /// one per name and alias, for their `[nats] agent_keys` file), creating the key
    /// in the state dir first if it has none, then exit.
    #[arg(long)]
    pub print_nats_key: bool,
    /// Flags over `[server]`.
    #[command(flatten)]
    pub server: ServerArgs,
}
