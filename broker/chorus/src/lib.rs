//! The `chorus` command line: parsing, and one module per group of subcommands. It drives a
//! broker (`chorus_broker`) and talks to clusters through the client library
//! (`chorus_consumers`); neither of those depends on it.
//!
//! - `serve`: run one broker (`config_file`: its flags from a TOML file); `inspect`: read a
//!   stopped broker's topic, as a restart would;
//! - `up`: a local cluster of broker processes, supervised; `demo`: a scripted tour;
//! - `commands`: everyday client commands (publish, subscribe, work, topic, group, status);
//! - `users`, `cert`: users and permissions; certificates and cluster secrets;
//! - `context`, `target`: which cluster a client command talks to, and as whom.

mod bench;
mod cert;
mod check;
mod commands;
mod config_file;
pub mod context;
mod demo;
mod inspect;
pub mod local;
mod report;
mod serve;
mod target;
mod up;
mod users;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use inspect::InspectArgs;
use serve::ServeArgs;

#[derive(Debug, Parser)]
#[command(name = "chorus", version, about = "A distributed message queue with atomic broadcast")]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Start a local cluster (3 brokers on loopback, data under ./chorus-data) and run until Ctrl-C.
    Up(up::UpArgs),
    /// Throughput and latency figures, on a cluster of its own (or --brokers).
    Bench(bench::BenchArgs),
    /// A scripted tour that checks Chorus's promises on a cluster of its own (or --brokers).
    Demo(demo::DemoArgs),
    /// Run one broker.
    Serve(ServeArgs),
    /// Print a topic's messages from a stopped broker's data directory, one per line:
    /// seq, log index, batch position, payload.
    Inspect(InspectArgs),
    /// Publish messages given as arguments, a file, or one per line of standard input.
    Publish(commands::PublishArgs),
    /// Print a topic's messages in order, one line each (or JSON with --json).
    Subscribe(commands::SubscribeArgs),
    /// Run a command once per message of a work group: payload on stdin, exit 0 acks. Says what
    /// it did with each message on stderr.
    Work(commands::WorkArgs),
    /// Create, list, describe, edit, redrive or delete topics.
    #[command(subcommand)]
    Topic(commands::TopicCommand),
    /// Create, list, describe, edit, peek into or delete work groups.
    #[command(subcommand)]
    Group(commands::GroupCommand),
    /// Create, reset or delete durable subscriptions' cursors.
    #[command(subcommand)]
    Subscription(commands::SubscriptionCommand),
    /// The cluster's brokers, roles, term, leader, indexes, lag, leader changes and readiness;
    /// exits 1 when a broker is down, there is no leader, or a broker is not ready.
    Status(commands::StatusArgs),
    /// Add a broker to the cluster (learner first, voter once caught up) or remove one (admin).
    #[command(subcommand)]
    Broker(commands::BrokerCommand),
    /// Hand leadership to another voter, before restarting the leader (admin).
    #[command(subcommand)]
    Leader(commands::LeaderCommand),
    /// Compare the brokers' applied states: mark a log index through the log, ask every broker
    /// for a digest of its state there, and say which agree. Exits non-zero on a difference.
    Check(check::CheckArgs),
    /// Create, update, list, describe or delete users and their permissions.
    #[command(subcommand)]
    User(users::UserCommand),
    /// Make a CA, broker and client certificates, or a cluster secret.
    #[command(subcommand)]
    Cert(cert::CertCommand),
}

/// Turns transparent huge pages off for this process. mimalloc (the binary's allocator) asks for
/// them on its arenas, and the kernel then zeroes 2 MiB at the first touch of each: under
/// one-message publishes the leader spent 12% of its CPU in `clear_page_erms`, its p99 ack latency
/// was 31 ms instead of 12, and its RSS peak 110 MiB instead of 80 (BENCHMARKS.md, "Huge pages").
/// Best effort: a kernel that refuses leaves the process as it was.
fn without_huge_pages() {
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// Runs the `chorus` command line; the binary's `main` is this. Huge pages go first, before
/// anything allocates much.
pub fn main() -> ExitCode {
    without_huge_pages();
    let args = match config_file::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("chorus: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    let default_filter = match cli.command {
        // openraft's raft_core warns of every stale vote or replication answer it drops, which
        // a healthy election produces: noise an operator cannot act on. Its replication logs an
        // ERROR for every failed heartbeat to a paused follower; the peer network logs a peer
        // that does not answer once per 10 s instead (`raft::network`).
        CliCommand::Serve(_) => "info,openraft=warn,openraft::core::raft_core=error,openraft::replication=off",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match &cli.command {
        CliCommand::Serve(args) if args.log_format == serve::LogFormat::Json => logs.json().init(),
        // Colour only for a person: `chorus up` writes brokers' logs to files.
        _ => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    let worker_threads = match &cli.command {
        CliCommand::Serve(args) => args.worker_threads,
        _ => None,
    };
    let result = runtime(worker_threads).and_then(|rt| rt.block_on(run(cli.command)));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("chorus: {}", report::line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The runtime, with `worker_threads` (default: one per core).
fn runtime(worker_threads: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(usize::from(threads));
    }
    builder.enable_all().build().context("starting the runtime")
}

async fn run(command: CliCommand) -> anyhow::Result<ExitCode> {
    match command {
        CliCommand::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
        CliCommand::Up(args) => up::run(args).await.map(|()| ExitCode::SUCCESS),
        CliCommand::Demo(args) => demo::run(args).await,
        CliCommand::Bench(args) => bench::run(args).await,
        CliCommand::Publish(args) => commands::publish(args).await,
        CliCommand::Subscribe(args) => commands::subscribe(args).await,
        CliCommand::Work(args) => commands::work(args).await,
        CliCommand::Topic(command) => commands::topic(command).await,
        CliCommand::Group(command) => commands::group(command).await,
        CliCommand::Subscription(command) => commands::subscription(command).await,
        CliCommand::Broker(command) => commands::broker(command).await,
        CliCommand::Leader(command) => commands::leader(command).await,
        CliCommand::Status(args) => commands::status(args).await,
        CliCommand::Check(args) => check::check(args).await,
        CliCommand::User(command) => users::run(command).await,
        CliCommand::Cert(command) => cert::run(command),
        CliCommand::Inspect(args) => inspect::inspect(&args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Regression (issue 18): every `topic` and `group` subcommand was described by the shared
    /// flags' doc ("Which cluster a client command talks to…"), and many flags had no help.
    #[test]
    fn every_command_and_flag_says_what_it_does() {
        use clap::CommandFactory;
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands().filter(|sub| sub.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                let about = sub.get_about().map(|about| about.to_string()).unwrap_or_default();
                if about.is_empty() || about.starts_with("Which cluster") {
                    missing.push(format!("{path}: {about:?}"));
                }
                for arg in sub.get_arguments().filter(|arg| !arg.is_hide_set() && !arg.is_positional()) {
                    if arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str()) {
                        missing.push(format!("{path} --{}", arg.get_id()));
                    }
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "chorus", &mut missing);
        assert!(missing.is_empty(), "no help for:\n{}", missing.join("\n"));
    }
}
