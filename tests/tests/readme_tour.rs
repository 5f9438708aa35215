//! The README's tour, run exactly as written (issue 18: its second line used to fail). The test
//! takes the `sh` block after "By hand:" from README.md, starts `chorus up` as the tour says
//! (on ports of its own, with its context in a directory of its own), and runs every line with
//! `chorus` on the PATH; each must exit 0.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chorus_tests::cluster::binary;

/// The lines of the tour's `sh` block.
fn tour_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README");
    let after = readme.split_once("By hand:").expect("the README's \"By hand:\" tour").1;
    let block = after.split_once("```sh\n").expect("an sh block").1.split_once("```").expect("its end").0;
    block.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect()
}

/// A first client port with three free client, three free peer and three free metrics ports
/// after it.
fn free_ports() -> (u16, u16, u16) {
    let start = 20_000 + (std::process::id() % 500) as u16 * 10;
    (0..500u16)
        .map(|step| start.wrapping_add(step * 10) % 10_000 + 20_000)
        .find(|&base| {
            (base..base + 3)
                .chain(base + 5..base + 8)
                .chain(base + 10..base + 13)
                .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        })
        .map(|base| (base, base + 5, base + 10))
        .expect("free ports")
}

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    let lines = tour_lines();
    assert!(lines.len() >= 8 && lines[0].starts_with("chorus "), "{lines:?}");
    let root = tempfile::tempdir().expect("a temp dir");
    let bin = root.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(binary(), bin.join("chorus")).expect("chorus on the PATH");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let config = root.path().join("config");
    let (client_port, peer_port, metrics_port) = free_ports();
    let shell = |line: &str| {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(line)
            .current_dir(root.path())
            .env("PATH", &path)
            .env("CHORUS_CONFIG_DIR", &config)
            .env_remove("CHORUS_CONTEXT")
            .env_remove("CHORUS_BROKERS");
        command
    };
    let up_line =
        format!("exec chorus up --client-port {client_port} --peer-port {peer_port} --metrics-port {metrics_port}");
    let log = std::fs::File::create(root.path().join("up.log")).unwrap();
    let up = Up(shell(&up_line).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("chorus up"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shell("chorus status").stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success() {
        let log = std::fs::read_to_string(root.path().join("up.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "the cluster did not come up:\n{log}");
        std::thread::sleep(Duration::from_millis(250));
    }
    for line in &lines {
        let output = shell(line).stdin(Stdio::null()).output().expect("run a tour line");
        assert!(
            output.status.success(),
            "`{line}` failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("$ {line}\n{}", String::from_utf8_lossy(&output.stdout));
        if line.starts_with("chorus subscribe orders --count 4") {
            let printed = String::from_utf8_lossy(&output.stdout);
            assert_eq!(printed, "1\tapple\n2\tbanana\n3\tcherry\n4\tdurian\tkey=fruit\n", "as the comment says");
        }
    }
    // Regression: the logs `up` writes held ANSI colour codes, and a healthy first start logged
    // six WARN lines about votes.
    for id in 1..=3 {
        let log = std::fs::read_to_string(root.path().join(format!("chorus-data/broker-{id}.log"))).unwrap();
        assert!(!log.contains('\x1b'), "colour codes in broker {id}'s log");
        let warnings: Vec<&str> = log.lines().filter(|line| line.contains(" WARN ")).collect();
        assert!(warnings.is_empty(), "broker {id} warned on a healthy start: {warnings:?}");
    }
    // Regression: a second `chorus up` on the directory a running one holds printed a banner,
    // restarted its brokers 30 times in 10 s, and overwrote the running brokers' pid files.
    let pid_file = root.path().join("chorus-data/1/broker.pid");
    let pid_before = std::fs::read_to_string(&pid_file).expect("broker 1's pid file");
    let second = shell(&up_line.replace("exec ", "")).stdin(Stdio::null()).output().expect("a second up");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second up on the same directory is refused");
    assert!(said.contains("is in use by another `chorus up`"), "{said}");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid_before, "the running cluster's pid files stay");
    drop(up);
}
