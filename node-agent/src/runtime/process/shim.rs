//! The shim (`capstan shim DIR`), the process runtime's containerd-shim-runc-v2 (or CRI-O's
//! conmon): it starts the container's command in its own process group, copies its stdout
//! and stderr into the CRI log file (`<RFC3339Nano> <stdout|stderr> <F|P> <line>`, as
//! containerd's CRI plugin writes them), records the pid and the exit, and outlives the
//! agent. `capstan shim-exec` is its `runc init`: it joins the container's cgroups (and, for
//! `kubectl exec -t`, takes a terminal) before it execs the command.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::attach;
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

/// Copies one output stream of the container into the log, a CRI record per line, and —
/// as it comes, so that a prompt without a newline shows — to the attached readers of
/// stream `i`.
fn pump(
    mut reader: impl std::io::Read,
    stream: &'static str,
    log: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
    attached: (std::sync::Arc<attach::Server>, usize),
) {
    let record = |partial: bool, msg: &[u8]| {
        if let Ok(mut f) = log.lock() {
            let _ = f.write_all(&log_record(stream, partial, msg));
        }
    };
    let mut buf = vec![0u8; 32 * 1024];
    let mut line: Vec<u8> = Vec::new();
    loop {
        // A terminal reports EIO once its last slave closes: that is its end of file.
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        attached.0.output(attached.1, &buf[..n]);
        for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
            let full = chunk.ends_with(b"\n");
            let mut rest = if full {
                &chunk[..chunk.len() - 1]
            } else {
                chunk
            };
            // A line longer than MAX_LINE goes out in partial (P) records, as containerd does.
            while line.len() + rest.len() >= MAX_LINE {
                let take = MAX_LINE - line.len();
                line.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                record(true, &line);
                line.clear();
                if rest.is_empty() && !full {
                    break;
                }
            }
            line.extend_from_slice(rest);
            if full {
                record(false, &line);
                line.clear();
            }
        }
    }
    // A last line without a newline at the end is full.
    if !line.is_empty() {
        record(false, &line);
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
    // (and sets oom_score_adj, and takes the terminal) and then execs it: limited from its
    // first instruction.
    let exe = std::env::current_exe().ok();
    let tty = f.tty && exe.is_some();
    let mut cmd = container_command(&f, exe.as_deref(), tty, &f.argv);
    let start_error = |message: String| {
        let _ = log
            .lock()
            .map(|mut l| l.write_all(&log_record("stderr", false, message.as_bytes())));
        record_exit(128, None, "StartError", Some(message));
        128
    };
    // A terminal: the container gets the slave on all three streams (shim-exec makes it its
    // session's controlling terminal) and the shim keeps the master.
    let mut master = None;
    if tty {
        let pty = open_pty().and_then(|(m, s)| {
            let s = std::fs::File::from(s);
            cmd.stdin(s.try_clone()?).stdout(s.try_clone()?).stderr(s);
            Ok(std::fs::File::from(m))
        });
        match pty {
            Ok(m) => master = Some(m),
            Err(e) => return start_error(format!("opening a terminal: {e}")),
        }
    } else {
        let stdin = if f.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        };
        cmd.stdin(stdin)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return start_error(format!("failed to start {:?}: {e}", f.argv[0])),
    };
    // The slave's copies in `cmd` must close, or the terminal never reports its end.
    drop(cmd);
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
    // `kubectl attach`: the container's input and output, on the shim's socket.
    let clone = |m: &Option<std::fs::File>| m.as_ref().and_then(|m| m.try_clone().ok());
    let input: Option<Box<dyn Write + Send>> = match (&master, child.stdin.take()) {
        (Some(_), _) if f.stdin => clone(&master).map(|m| Box::new(m) as _),
        (None, Some(pipe)) => Some(Box::new(pipe)),
        _ => None,
    };
    let attached = attach::Server::new(input, f.stdin_once, clone(&master));
    if let Err(e) = attached.listen(dir) {
        let msg = format!("capstan shim: kubectl attach is unavailable: {e}");
        let _ = log
            .lock()
            .map(|mut l| l.write_all(&log_record("stderr", false, msg.as_bytes())));
    }
    let outputs: Vec<(Box<dyn std::io::Read + Send>, &'static str, usize)> = match master {
        Some(m) => vec![(Box::new(m), "stdout", 0)],
        None => [
            child.stdout.take().map(|o| (Box::new(o) as _, "stdout", 0)),
            child.stderr.take().map(|e| (Box::new(e) as _, "stderr", 1)),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(r, stream, i)| {
            let (log, attached) = (log.clone(), attached.clone());
            std::thread::spawn(move || pump(r, stream, log, (attached, i)))
        })
        .collect();
    let status = child.wait();
    // Like a container whose first process exits: whatever it left running goes too (and
    // releases the output pipes).
    signal_group(pid, rustix::process::Signal::KILL);
    for t in pumps {
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
