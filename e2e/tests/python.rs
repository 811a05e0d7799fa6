//! The official Kubernetes Python client (`pip install kubernetes`) against `capstan up`:
//! e2e/python/client_calls.py makes the calls and asserts; this test runs it.

use std::process::Command;

#[test]
fn the_official_python_client_works_against_capstan() {
    let dir = capstan_testkit::temp_dir("capstan-python-").unwrap();
    let up = capstan_testkit::CapstanUp::start(
        capstan_testkit::capstan_bin(),
        &[std::ffi::OsStr::new("--data-dir"), dir.path().as_os_str()],
    )
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/client_calls.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir.path().join("kubeconfig"))
        .output()
        .expect("python3 not found");
    drop(up);
    assert!(
        out.status.success(),
        "{}{}\n(needs `pip install kubernetes`; make test installs it)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all calls behaved"));
}
