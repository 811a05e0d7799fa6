//! What the `capstan` binary prints about itself: every `--help` names every controller, and
//! logs written to a file (not a terminal) carry no colour codes.

use std::process::{Command, Stdio};
use std::time::Duration;

use capstan_testkit::{capstan_bin, eventually, temp_dir};

#[test]
fn controllers_and_up_help_name_every_controller() {
    for sub in ["controllers", "up", "apiserver"] {
        let out = Command::new(capstan_bin())
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        // clap wraps long lines: compare with the whitespace folded.
        let folded = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for name in capstan_controllers::ALL {
            assert!(
                folded.contains(&format!("{name},")) || folded.contains(&format!("{name} ")),
                "`capstan {sub} --help` does not name {name}:\n{help}"
            );
        }
        assert!(
            folded.contains(&capstan_controllers::ALL.join(", ")),
            "{help}"
        );
    }
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = temp_dir("capstan-log-").unwrap();
    let log_path = dir.path().join("capstan.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(capstan_bin())
        .args(["up", "--listen", "127.0.0.1:0", "--runtime", "none"])
        .args(["--proxy", "off", "--dns", "off", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let read = || std::fs::read(&log_path).unwrap_or_default();
    let r = eventually(Duration::from_secs(30), "the controllers lead", || {
        String::from_utf8_lossy(&read()).contains("became the leader")
    });
    let _ = child.kill();
    let _ = child.wait();
    r.unwrap();
    let text = read();
    assert!(
        !text.contains(&0x1b),
        "ESC in the log file:\n{}",
        String::from_utf8_lossy(&text)
    );
}
