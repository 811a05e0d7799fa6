//! `capstan pause`: the one process of Capstan's own sandbox image
//! (capstan_node_agent::pause_image), Kubernetes' pause.c in Rust — it holds a pod's
//! namespaces, sleeping until SIGTERM or SIGINT (then exits 0), and reaps the orphans that land
//! on it as pid 1 of a shared process namespace (pause.c's SIGCHLD handler; ignoring SIGCHLD
//! would have the kernel do it, but that needs an unsafe sigaction).

use std::process::ExitCode;

pub fn run() -> ExitCode {
    // Signals need the I/O driver; one thread is all this does.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capstan pause: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        // As pid 1, a signal without a handler is ignored: these handlers are what let it stop.
        let (mut term, mut int, mut child) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::child()),
        ) {
            (Ok(t), Ok(i), Ok(c)) => (t, i, c),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                eprintln!("capstan pause: handling signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        loop {
            reap();
            tokio::select! {
                _ = term.recv() => return ExitCode::SUCCESS,
                _ = int.recv() => return ExitCode::SUCCESS,
                _ = child.recv() => {}
            }
        }
    })
}

/// Collects every child that has exited, without waiting for the running ones.
fn reap() {
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
}
