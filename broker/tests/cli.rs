//! The real `chorus` binary: `up` starts a cluster and restarts it on the same data, the
//! everyday commands work against it, and `demo` passes its checks.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn chorus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chorus"))
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
    fn start(data_dir: &Path, client_port: u16, peer_port: u16) -> Up {
        let child = chorus()
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .args(["--client-port", &client_port.to_string(), "--peer-port", &peer_port.to_string()])
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

/// Runs `chorus ARGS --brokers BROKERS` (before any `--`, which ends chorus's own flags).
fn run(brokers: &str, args: &[&str]) -> String {
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    let output = chorus().args(&args[..split]).args(["--brokers", brokers]).args(&args[split..]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "chorus {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Waits until `chorus status` shows one broker in the leader role and two followers. (The
/// header line has a "leader" column too, so roles are read from the third column.)
fn wait_for_status(brokers: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = chorus().args(["status", "--brokers", brokers]).output().unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let (client_port, peer_port) = (free_ports(3), free_ports(3));
    let brokers: String = (0..3).map(|i| format!("127.0.0.1:{}", client_port + i)).collect::<Vec<_>>().join(",");
    let up = Up::start(dir.path(), client_port, peer_port);
    let status = wait_for_status(&brokers);
    assert_eq!(status.lines().filter(|l| l.contains("follower")).count(), 2, "{status}");

    run(&brokers, &["topic", "create", "orders"]);
    run(&brokers, &["group", "create", "orders", "billing"]);
    let published = run(&brokers, &["publish", "orders", "one", "two", "three", "--json"]);
    assert!(published.contains("\"first_seq\":1") && published.contains("\"last_seq\":3"), "{published}");
    let mut from_stdin = chorus()
        .args(["publish", "orders", "--brokers", &brokers])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    from_stdin.stdin.take().unwrap().write_all(b"four\nfive\n").unwrap();
    let output = from_stdin.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("sequences 4..=5"));
    let read = run(&brokers, &["subscribe", "orders", "--count", "5"]);
    assert_eq!(read, "1\tone\n2\ttwo\n3\tthree\n4\tfour\n5\tfive\n");
    // Message 2 fails once, then succeeds: it is nacked and delivered again.
    let script = "cat > /dev/null; if [ \"$CHORUS_SEQ\" = 2 ] && [ \"$CHORUS_DELIVERY\" = 1 ]; then exit 1; fi";
    let worked = run(&brokers, &["work", "orders", "billing", "--count", "6", "--", "sh", "-c", script]);
    assert_eq!(worked.lines().filter(|l| l.ends_with("\tack")).count(), 5, "{worked}");
    assert!(worked.contains("2\t1\tnack") && worked.contains("2\t2\tack"), "{worked}");
    let described = run(&brokers, &["group", "describe", "orders", "billing", "--json"]);
    assert!(described.contains("\"acked_total\":5") && described.contains("\"nacked_total\":1"), "{described}");
    assert!(run(&brokers, &["topic", "list"]).contains("orders"));

    let output = up.interrupt();
    assert!(output.status.success(), "up exits cleanly on Ctrl-C");
    assert!(String::from_utf8_lossy(&output.stdout).contains("stopped"));

    // Again, on the same data.
    let _up = Up::start(dir.path(), client_port, peer_port);
    wait_for_status(&brokers);
    let topic = run(&brokers, &["topic", "describe", "orders", "--json"]);
    assert!(topic.contains("\"messages\":5"), "{topic}");
    let read = run(&brokers, &["subscribe", "orders", "--count", "2", "--from", "4"]);
    assert_eq!(read, "4\tfour\n5\tfive\n");
}

#[test]
fn demo_passes_its_checks() {
    let output = chorus().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for check in ["failed over to worker B", "StaleLease", "same order", "exactly once", "all checks passed"] {
        assert!(stdout.contains(check), "missing {check:?} in:\n{stdout}");
    }
}

#[test]
fn bad_arguments_are_reported_not_panicked() {
    let output = chorus().args(["serve", "--id", "1"]).output().unwrap();
    assert!(!output.status.success());
    let output = chorus().args(["topic", "list", "--brokers", "127.0.0.1:1"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("chorus:"), "a typed error, not a panic");
}
