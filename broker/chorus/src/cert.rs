//! `chorus cert`: the material a secured cluster needs, made with rcgen. A CA (keep its key
//! offline), broker certificates for the hosts each broker is reached at, client certificates
//! whose common name is a user, and cluster secrets for brokers without TLS. docs/security.md
//! walks through issuing and rotating them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use chorus_broker::security::pki::{self, Authority, Validity};
use chorus_broker::security::secret;

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// A new CA: `ca.pem` and `ca.key` in --out.
    Ca {
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Chorus CA")]
        name: String,
    },
    /// A broker's certificate and key (`broker.pem`, `broker.key`, with the CA's `ca.pem`).
    Broker {
        #[command(flatten)]
        ca: CaFiles,
        /// A host name or IP address the broker is reached at; repeat for each.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// The certificate's common name.
        #[arg(long, default_value = "chorus-broker")]
        name: String,
        /// Where to write the certificate and key.
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// A client certificate naming a user (`<user>.pem`, `<user>.key`).
    Client {
        #[command(flatten)]
        ca: CaFiles,
        /// The user the certificate names (its common name).
        #[arg(long)]
        user: String,
        /// Where to write the certificate and key.
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// A new cluster secret, for brokers without TLS (`--cluster-secret-file`).
    Secret {
        /// The file to write, readable by its owner only.
        #[arg(long)]
        out: PathBuf,
    },
}

/// The CA that signs.
#[derive(Debug, Clone, Args)]
pub struct CaFiles {
    /// The CA's certificate.
    #[arg(long)]
    pub ca_cert: PathBuf,
    /// The CA's key.
    #[arg(long)]
    pub ca_key: PathBuf,
}

pub fn run(command: CertCommand) -> anyhow::Result<ExitCode> {
    let written = match command {
        CertCommand::Ca { out, name } => {
            let ca = Authority::generate(&name)?;
            create_dir(&out)?;
            pki::write_file(&out.join("ca.pem"), &ca.cert_pem, false)?;
            pki::write_file(&out.join("ca.key"), &ca.key_pem, true)?;
            vec![out.join("ca.pem"), out.join("ca.key")]
        }
        CertCommand::Broker { ca, hosts, name, out, days } => {
            let authority = Authority::load(&ca.ca_cert, &ca.ca_key)?;
            let issued = authority.issue_server(&name, &hosts, Validity::days(days))?;
            create_dir(&out)?;
            let files = pki::write_broker_files(&out, &authority, &issued)?;
            vec![files.cert, files.key, files.ca]
        }
        CertCommand::Client { ca, user, out, days } => {
            chorus_machine::validate::name("user", &user).map_err(anyhow::Error::msg)?;
            let authority = Authority::load(&ca.ca_cert, &ca.ca_key)?;
            let issued = authority.issue_client(&user, Validity::days(days))?;
            create_dir(&out)?;
            let (cert, key) = (out.join(format!("{user}.pem")), out.join(format!("{user}.key")));
            pki::write_file(&cert, &issued.cert_pem, false)?;
            pki::write_file(&key, &issued.key_pem, true)?;
            vec![cert, key]
        }
        CertCommand::Secret { out } => {
            pki::write_file(&out, &format!("{}\n", secret::generate()), true)?;
            vec![out]
        }
    };
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn create_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}
