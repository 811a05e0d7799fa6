//! The shim (`capstan shim DIR`), the process runtime's containerd-shim-runc-v2 (or CRI-O's
//! conmon): it starts the container's command in its own process group, copies its stdout
//! and stderr into the CRI log file (`<RFC3339Nano> <stdout|stderr> <F|P> <line>`, as
//! containerd's CRI plugin writes them), records the pid and the exit, and outlives the
//! agent. `capstan shim-exec` is its `runc init`: it joins the container's cgroups (and, for
//! `kubectl exec -t`, takes a terminal) before it execs the command.

use std::io::{BufRead, Read as _, Write};
use std::path::{Path, PathBuf};

use super::cgroups::oom_kills;
use super::state::{
    ContainerFile, ExitFile, PidFile, read_json, signal_group, start_ticks, write_json,
};

/// Lines longer than this are split into partial (P) records, as containerd does.
const MAX_LINE: usize = 16 * 1024;

/// One CRI log record: `<RFC3339Nano> <stream> <F|P> <msg>\n`.
pub fn log_record(stream: &str, partial: bool, msg: &[u8]) -> Vec<u8> {
    let ts = jiff::Timestamp::now();
    let mut line = format!(
        "{} {stream} {} ",
        ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        if partial { "P" } else { "F" }
    )
    .into_bytes();
    line.extend_from_slice(msg);
    line.push(b'\n');
    line
}

fn pump(
    reader: impl std::io::Read,
    stream: &'static str,
    log: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
) {
    let mut reader = std::io::BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let full = buf.ends_with(b"\n");
        let msg = if full { &buf[..n - 1] } else { &buf[..] };
        // A line cut at MAX_LINE is partial; a last line without a newline at EOF is full.
        let partial = !full && n == MAX_LINE;
        let record = log_record(stream, partial, msg);
        if let Ok(mut f) = log.lock() {
            let _ = f.write_all(&record);
        }
    }
}

/// The shim's main (`capstan shim DIR`): runs the container described in DIR/container.json
/// and records it. Returns the process's exit code.
pub fn shim_main(dir: &Path) -> i32 {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let Some(f) = read_json::<ContainerFile>(&dir.join("container.json")) else {
        eprintln!("shim: no container.json in {}", dir.display());
        return 2;
    };
    let record_exit = |code: i32, signal: Option<i32>, reason: &str, message: Option<String>| {
        let _ = write_json(
            &dir.join("exit.json"),
            &ExitFile {
                exit_code: code,
                signal,
                finished_at: jiff::Timestamp::now(),
                reason: reason.to_string(),
                message,
            },
        );
    };
    if let Some(parent) = f.log_file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&f.log_file)
    {
        Ok(l) => std::sync::Arc::new(std::sync::Mutex::new(l)),
        Err(e) => {
            record_exit(
                128,
                None,
                "StartError",
                Some(format!("opening the log {}: {e}", f.log_file.display())),
            );
            return 128;
        }
    };
    // With a cgroup, the command starts through `capstan shim-exec`, which joins the cgroup
    // (and sets oom_score_adj) and then execs it: limited from its first instruction.
    let exe = std::env::current_exe().ok();
    let mut cmd = container_command(&f, exe.as_deref(), false, &f.argv);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let message = format!("failed to start {:?}: {e}", f.argv[0]);
            let _ = log
                .lock()
                .map(|mut l| l.write_all(&log_record("stderr", false, message.as_bytes())));
            record_exit(128, None, "StartError", Some(message));
            return 128;
        }
    };
    let pid = child.id() as i32;
    let _ = write_json(
        &dir.join("pid.json"),
        &PidFile {
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            shim_pid: std::process::id() as i32,
            started_at: jiff::Timestamp::now(),
        },
    );
    let out = child.stdout.take().map(|o| {
        let log = log.clone();
        std::thread::spawn(move || pump(o, "stdout", log))
    });
    let err = child.stderr.take().map(|e| {
        let log = log.clone();
        std::thread::spawn(move || pump(e, "stderr", log))
    });
    let status = child.wait();
    // Like a container whose first process exits: whatever it left running goes too (and
    // releases the output pipes).
    signal_group(pid, rustix::process::Signal::KILL);
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
    let (code, signal) = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (c, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            _ => (137, None),
        },
        Err(_) => (137, None),
    };
    // An OOM kill anywhere in the container's cgroup (its command, or a child whose death a
    // shell turned into exit code 137) makes it OOMKilled, as containerd reports it.
    let oom = code != 0 && f.cgroups.iter().any(|cg| oom_kills(cg) > 0);
    record_exit(
        code,
        signal,
        match (code, oom) {
            (_, true) => "OOMKilled",
            (0, _) => "Completed",
            _ => "Error",
        },
        None,
    );
    code
}

/// `argv` as a command of the container `f`: its environment and working directory, and —
/// when it has cgroups to join or a terminal (`tty`) to take — started through `capstan
/// shim-exec` (`trampoline`, the capstan binary), which does that and then execs it.
pub(super) fn container_command(
    f: &ContainerFile,
    trampoline: Option<&Path>,
    tty: bool,
    argv: &[String],
) -> std::process::Command {
    let mut c = match trampoline {
        Some(exe) if tty || !f.cgroups.is_empty() => {
            let mut c = std::process::Command::new(exe);
            c.arg("shim-exec");
            for cg in &f.cgroups {
                c.arg("--cgroup").arg(cg);
            }
            if tty {
                c.arg("--tty");
            }
            c.arg("--oom-score-adj")
                .arg(f.resources.oom_score_adj.to_string())
                .arg("--")
                .args(argv);
            c
        }
        // (An empty argv fails to start, with an error.)
        _ => {
            let (program, args) = argv
                .split_first()
                .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
            let mut c = std::process::Command::new(program);
            c.args(args);
            c
        }
    };
    c.env_clear().envs(f.env.iter().map(|(k, v)| (k, v)));
    if let Some(wd) = &f.working_dir {
        c.current_dir(wd);
    }
    c
}

/// A pseudo-terminal: (master, slave).
pub(super) fn open_pty() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok((master, slave))
}

/// `capstan shim-exec --cgroup DIR... --oom-score-adj N -- ARGV...`: joins the cgroups (one
/// per hierarchy), sets the OOM score adjustment and execs ARGV (same pid, environment,
/// directory and process group). Returns only if that fails, with the exit code to use (the
/// message goes to stderr, which is the container's log).
pub fn shim_exec(cgroups: &[PathBuf], oom_score_adj: i64, tty: bool, argv: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    // `kubectl exec -t`: a session of its own whose controlling terminal is the pty on stdin.
    if tty {
        if let Err(e) = rustix::process::setsid() {
            eprintln!("capstan: setsid: {e}");
            return 128;
        }
        if let Err(e) = rustix::process::ioctl_tiocsctty(std::io::stdin()) {
            eprintln!("capstan: cannot take the terminal: {e}");
            return 128;
        }
    }
    for cg in cgroups {
        // "0" is the writing process itself.
        if let Err(e) = std::fs::write(cg.join("cgroup.procs"), "0") {
            eprintln!("capstan: cannot join the cgroup {}: {e}", cg.display());
            return 128;
        }
    }
    // Lowering the score needs CAP_SYS_RESOURCE; without it the inherited score stays, as
    // containerd's restrict_oom_score_adj does (raising is always allowed).
    if oom_score_adj != 0 {
        let _ = std::fs::write("/proc/self/oom_score_adj", oom_score_adj.to_string());
    }
    let Some((program, args)) = argv.split_first() else {
        eprintln!("capstan: shim-exec: no command");
        return 128;
    };
    let err = std::process::Command::new(program).args(args).exec();
    // The shim reported a start failure of its own command as 128 with the error; the same here.
    eprintln!("failed to start {program:?}: {err}");
    128
}
