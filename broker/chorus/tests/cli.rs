//! The real `chorus` binary: `up` starts a secured cluster and restarts it on the same data, the
//! everyday commands work against it through the context it wrote, users get the permissions
//! they are given, and `demo` passes its checks. Each test has a config directory of its own
//! (`CHORUS_CONFIG_DIR`), so no test reads or writes the user's current context.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn chorus(config_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
    command.env("CHORUS_CONFIG_DIR", config_dir).env_remove("CHORUS_CONTEXT");
    command
}

/// `count` consecutive free loopback ports.
fn free_ports(count: u16) -> u16 {
    loop {
        let base = rand::random_range(20_000..60_000);
        if (base..base + count).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            return base;
        }
    }
}

/// A `chorus up` process, killed if the test ends without interrupting it.
struct Up {
    child: Option<Child>,
}

impl Up {
    /// `chorus up` on `data_dir`; its context goes to `config_dir`. The metrics ports are free
    /// ones, the others as given.
    fn start(config_dir: &Path, data_dir: &Path, client_port: u16, peer_port: u16) -> Up {
        let metrics_port = free_ports(3).to_string();
        let child = chorus(config_dir)
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .args(["--client-port", &client_port.to_string(), "--peer-port", &peer_port.to_string()])
            .args(["--metrics-port", &metrics_port])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chorus up");
        Up { child: Some(child) }
    }

    /// Ctrl-C, then its exit status and what it printed.
    fn interrupt(mut self) -> Output {
        let child = self.child.take().expect("running");
        Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
        child.wait_with_output().unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets `up` stop its brokers; kill it if it does not.
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `chorus ARGS`, reaching the cluster through the context in `config_dir`.
fn run(config_dir: &Path, args: &[&str]) -> String {
    let output = chorus(config_dir).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "chorus {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Runs `chorus ARGS` expecting it to fail; its standard error.
fn fails(config_dir: &Path, args: &[&str]) -> String {
    let output = chorus(config_dir).args(args).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "chorus {args:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Waits until `chorus status` shows one broker in the leader role and two followers. (The
/// header line has a "leader" column too, so roles are read from the third column.)
fn wait_for_status(config_dir: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = chorus(config_dir).args(["status"]).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let roles: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(2)).collect();
        let leaders = roles.iter().filter(|r| **r == "leader").count();
        let followers = roles.iter().filter(|r| **r == "follower").count();
        if output.status.success() && leaders == 1 && followers == 2 && !text.contains("down") {
            return text;
        }
        assert!(Instant::now() < deadline, "no healthy cluster: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn up_serves_the_everyday_commands_and_restarts_on_the_same_data() {
    let (dir, config) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = config.path();
    let (client_port, peer_port) = (free_ports(3), free_ports(3));
    let up = Up::start(config, dir.path(), client_port, peer_port);
    let status = wait_for_status(config);
    assert_eq!(status.lines().filter(|l| l.contains("follower")).count(), 2, "{status}");

    run(config, &["topic", "create", "orders"]);
    run(config, &["group", "create", "orders", "billing"]);
    let published = run(config, &["publish", "orders", "one", "two", "three", "--json"]);
    let seqs: Vec<&str> = published.lines().filter_map(|l| l.split("\"seq\":").nth(1)?.split(',').next()).collect();
    assert_eq!(seqs, ["1", "2", "3"], "one line per message: {published}");
    let mut from_stdin =
        chorus(config).args(["publish", "orders"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    from_stdin.stdin.take().unwrap().write_all(b"four\nfive\n").unwrap();
    let output = from_stdin.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("sequences 4..=5"));
    let read = run(config, &["subscribe", "orders", "--count", "5"]);
    assert_eq!(read, "1\tone\n2\ttwo\n3\tthree\n4\tfour\n5\tfive\n");
    // Message 2 fails once, then succeeds: it is nacked and delivered again.
    let script = "cat > /dev/null; if [ \"$CHORUS_SEQ\" = 2 ] && [ \"$CHORUS_DELIVERY\" = 1 ]; then exit 1; fi";
    let output = chorus(config).args(["work", "orders", "billing", "--count", "6", "--", "sh", "-c", script]).output();
    let output = output.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stdout.is_empty(), "the command's output is its own, and it printed nothing");
    let worked = String::from_utf8_lossy(&output.stderr);
    assert_eq!(worked.lines().filter(|l| l.ends_with(": ack")).count(), 5, "{worked}");
    assert!(worked.contains("seq 2 delivery 1: nack") && worked.contains("seq 2 delivery 2: ack"), "{worked}");
    let described = run(config, &["group", "describe", "orders", "billing", "--json"]);
    assert!(described.contains("\"acked_total\":5") && described.contains("\"nacked_total\":1"), "{described}");
    assert!(run(config, &["topic", "list"]).contains("orders"));

    // The cluster is secured: plaintext, or the right address without its CA, is refused.
    let brokers: String = (0..3).map(|i| format!("127.0.0.1:{}", client_port + i)).collect::<Vec<_>>().join(",");
    let bare = tempfile::tempdir().unwrap();
    assert!(fails(bare.path(), &["topic", "list", "--brokers", &brokers]).contains("chorus:"));

    // A user with one permission: it publishes to orders, and nothing else.
    let create = ["user", "create", "alice", "--password-stdin", "--permit", "publish:orders"];
    run_with_input(config, &create, "alice-pw\n");
    let alice = ["--user", "alice", "--password", "alice-pw"];
    run(config, &[&["publish", "orders", "by-alice"][..], &alice].concat());
    let refused = fails(config, &[&["topic", "create", "elsewhere"][..], &alice].concat());
    assert!(refused.to_lowercase().contains("forbidden"), "{refused}");
    let listed = run(config, &["user", "list", "--json"]);
    assert!(listed.contains("\"name\":\"alice\"") && listed.contains("publish:orders"), "{listed}");

    let output = up.interrupt();
    assert!(output.status.success(), "up exits cleanly on Ctrl-C");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("stopped"));
    // Where each broker's metrics and log are.
    for id in 1..=3 {
        let log = dir.path().canonicalize().unwrap().join(format!("broker-{id}.log"));
        assert!(printed.contains(&log.display().to_string()), "broker {id}'s log path missing:\n{printed}");
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(!log.contains('\x1b'), "no ANSI codes in a log file:\n{log}");
    }
    assert_eq!(printed.matches("/metrics").count(), 3, "{printed}");

    // Again, on the same data, with the same certificates and admin.
    let _up = Up::start(config, dir.path(), client_port, peer_port);
    wait_for_status(config);
    let topic = run(config, &["topic", "describe", "orders", "--json"]);
    assert!(topic.contains("\"messages\":6"), "{topic}");
    let read = run(config, &["subscribe", "orders", "--count", "2", "--from", "4"]);
    assert_eq!(read, "4\tfour\n5\tfive\n");
}

/// Runs `chorus ARGS` with `input` on its standard input; its standard output.
fn run_with_input(config_dir: &Path, args: &[&str], input: &str) -> String {
    let mut child = chorus(config_dir).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "chorus {args:?} failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The by-hand path of docs/security.md: a CA, a broker certificate, an admin's password hash;
/// a broker started with them serves the admin over TLS, and nobody without the CA.
#[test]
fn a_broker_runs_on_certificates_made_by_chorus_cert() {
    let (dir, config) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = config.path();
    let out = dir.path().join("pki");
    let out = out.to_str().unwrap();
    run(config, &["cert", "ca", "--out", out]);
    let (ca_cert, ca_key) = (format!("{out}/ca.pem"), format!("{out}/ca.key"));
    let ca = ["--ca-cert", ca_cert.as_str(), "--ca-key", ca_key.as_str()];
    run(config, &[&["cert", "broker", "--host", "127.0.0.1", "--out", out][..], &ca].concat());
    run(config, &[&["cert", "client", "--user", "alice", "--out", out][..], &ca].concat());
    let secret = format!("{out}/cluster.secret");
    run(config, &["cert", "secret", "--out", &secret]);
    for file in ["ca.pem", "ca.key", "broker.pem", "broker.key", "alice.pem", "alice.key", "cluster.secret"] {
        assert!(Path::new(out).join(file).exists(), "{file}");
    }
    let hash = run_with_input(config, &["user", "hash-password"], "admin-pw\n");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let hash_file = format!("{out}/admin.hash");
    std::fs::write(&hash_file, hash).unwrap();

    let (client_port, peer_port) = (free_ports(1), free_ports(1));
    let (client, peer) = (format!("127.0.0.1:{client_port}"), format!("127.0.0.1:{peer_port}"));
    let data = dir.path().join("data");
    let mut broker = chorus(config)
        .args(["serve", "--id", "1", "--client-addr", &client, "--peer-addr", &peer])
        .arg(format!("--member=1={peer},{client}"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--tls-cert", &format!("{out}/broker.pem"), "--tls-key", &format!("{out}/broker.key")])
        .args(["--tls-ca", &ca_cert, "--auth", "--admin-password-hash-file", &hash_file])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin = ["--brokers", client.as_str(), "--ca", ca_cert.as_str(), "--user", "admin", "--password", "admin-pw"];
    let deadline = Instant::now() + Duration::from_secs(30);
    let answered = loop {
        let output = chorus(config).args(["status"]).args(admin).output().unwrap();
        if output.status.success() || Instant::now() > deadline {
            break output;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stranger = chorus(config).args(["status", "--brokers", &client]).output().unwrap();
    let _ = broker.kill();
    let _ = broker.wait();
    assert!(answered.status.success(), "the admin over TLS: {}", String::from_utf8_lossy(&answered.stderr));
    assert!(String::from_utf8_lossy(&answered.stdout).contains("leader"));
    assert!(!stranger.status.success(), "without the CA and a user, nothing");
}

/// `chorus serve --config FILE` takes its flags from the file, a flag on the command line
/// overrides the file's key, and `--client-bind` listens where `--client-addr` is not.
#[test]
fn a_broker_runs_from_a_config_file_with_flags_overriding_it() {
    let (dir, config) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = config.path();
    let (client_port, peer_port, metrics_port) = (free_ports(1), free_ports(1), free_ports(1));
    let (client, peer) = (format!("127.0.0.1:{client_port}"), format!("127.0.0.1:{peer_port}"));
    let file = dir.path().join("chorus.toml");
    let text = format!(
        "id = 1\ndata_dir = \"{}\"\nclient-addr = \"{client}\"\nclient-bind = \"0.0.0.0:{client_port}\"\n\
         peer-addr = \"{peer}\"\nmember = [\"1={peer},{client}\"]\nmetrics-addr = \"127.0.0.1:1\"\nlog-format = \"json\"\n",
        dir.path().join("data").display()
    );
    std::fs::write(&file, text).unwrap();
    let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut broker = chorus(config)
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--metrics-addr", &metrics])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let answered = loop {
        let output = chorus(config).args(["status", "--brokers", &client]).output().unwrap();
        if output.status.success() || Instant::now() > deadline {
            break output;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The metrics address the command line gave, not the file's.
    let metrics_answered = std::net::TcpStream::connect(&metrics).is_ok();
    let _ = broker.kill();
    let _ = broker.wait();
    let logged = std::fs::read_to_string(dir.path().join("broker.log")).unwrap();
    assert!(answered.status.success(), "{}\n{logged}", String::from_utf8_lossy(&answered.stdout));
    assert!(metrics_answered, "{logged}");
    assert!(
        logged.lines().any(|line| line.starts_with('{') && line.contains("\"broker started\"")),
        "JSON logs:\n{logged}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = 1\nno-such-flag = 3\n").unwrap();
    let output = chorus(config).args(["serve", "--config"]).arg(&bad).output().unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--no-such-flag"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn demo_passes_its_checks() {
    let config = tempfile::tempdir().unwrap();
    let output = chorus(config.path()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for check in ["failed over to worker B", "StaleLease", "same order", "exactly once", "all checks passed"] {
        assert!(stdout.contains(check), "missing {check:?} in:\n{stdout}");
    }
}

#[test]
fn bad_arguments_are_reported_not_panicked() {
    let config = tempfile::tempdir().unwrap();
    let output = chorus(config.path()).args(["serve", "--id", "1"]).output().unwrap();
    assert!(!output.status.success());
    // An unauthenticated peer port may not leave loopback.
    let dir = tempfile::tempdir().unwrap();
    let output = chorus(config.path())
        .args([
            "serve",
            "--id",
            "1",
            "--client-addr",
            "127.0.0.1:0",
            "--peer-addr",
            "0.0.0.0:0",
            "--member",
            "1=x:1,y:2",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a loopback address"), "{output:?}");
    let output = chorus(config.path()).args(["topic", "list", "--brokers", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("chorus:"), "a typed error, not a panic");
}
