//! `chorus inspect`: a stopped broker's copy of a topic, read as the broker would serve it after a
//! restart. The data directory is copied first and the copy replays the committed log entries its
//! state had not applied (after a kill -9 the state on disk is the last durable one), so the
//! broker's own files are never changed. A running broker's directory is refused, naming it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chorus_broker::raft::log_store::LogStore;
use chorus_broker::raft::replay::replay_committed;
use chorus_broker::raft::state_store::StateStore;
use clap::Args;

/// Page caches for the copy: inspect reads once, front to back.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The stopped broker's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The topic to print.
    #[arg(long)]
    pub topic: String,
}

pub async fn inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    refuse_a_running_broker(&args.data_dir)?;
    let copy = tempfile::tempdir().context("a directory for the copy")?;
    copy_dir(&args.data_dir, copy.path())?;
    let mut log = LogStore::open(&copy.path().join("log.redb"), CACHE_BYTES).context("opening the log")?;
    let mut state = StateStore::open(copy.path(), CACHE_BYTES).context("opening the state")?;
    let replayed = replay_committed(&mut log, &mut state).await.context("replaying the committed log")?;
    if replayed > 0 {
        eprintln!("inspect: replayed {replayed} committed log entries the state had not applied, as a restart would");
    }
    let store = state.database().read()?;
    let topic =
        chorus_machine::query::topic(&store, &args.topic)?.with_context(|| format!("no topic {:?}", args.topic))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut next = topic.first_seq;
    loop {
        let page = chorus_machine::query::read(&store, &topic, next, 1024, u64::MAX)?;
        let Some((last, _)) = page.last() else { break };
        next = last + 1;
        for (seq, message) in page {
            let payload = String::from_utf8_lossy(&message.payload);
            writeln!(out, "{seq}\t{}\t{}\t{payload}", message.log_index, message.batch_pos)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// A running broker holds its state open: say which, and how to read it instead.
fn refuse_a_running_broker(data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join("state.redb");
    match redb::Database::open(&path) {
        Ok(_) => Ok(()),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            let pid = std::fs::read_to_string(data_dir.join("broker.pid")).unwrap_or_default();
            let pid = match pid.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            anyhow::bail!(
                "the broker in {} is running{pid}: stop it first, or read the running broker with \
                 `chorus subscribe TOPIC --brokers ITS_CLIENT_ADDRESS --until-end`",
                data_dir.display()
            )
        }
        Err(error) => Err(error).with_context(|| format!("opening {}", path.display())),
    }
}

/// Copies `from` into `to`, files and directories.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
