//! The official Kubernetes Python client (`pip install kubernetes`) against `capstan up`:
//! e2e/python/client_calls.py makes the calls and asserts; this test runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn the_official_python_client_works_against_capstan() {
    let dir = capstan_testkit::temp_dir("capstan-python-").unwrap();
    let mut up = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("capstan up is not ready");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/python/client_calls.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir.path().join("kubeconfig"))
        .output()
        .expect("python3 not found");
    let _ = up.kill();
    let _ = up.wait();
    assert!(
        out.status.success(),
        "{}{}\n(needs `pip install kubernetes`; make test installs it)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all calls behaved"));
}
