//! `--header-read-timeout-seconds`, `--idle-timeout-seconds`, `--max-connections`: the API
//! server's connection limits (`capstan_apiserver::serve`), and the file-descriptor limit they
//! must fit in; `--max-requests-inflight` and `--max-mutating-requests-inflight`, its request
//! limits (`capstan_apiserver::http::inflight`).

use std::time::Duration;

use capstan_apiserver::ServeLimits;
use capstan_apiserver::http::serve::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
use clap::Args;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept for everything but client connections: the store, etcd, containerd, logs.
const FD_RESERVE: u64 = 256;

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// A client must send a request's headers within this many seconds (of connecting, or of
    /// the request's first byte on a kept-alive connection), else the connection is closed.
    #[arg(long, default_value_t = DEFAULT_HEADER_READ_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_seconds: u64,
    /// A kept-alive connection with no request in progress is closed after this many seconds.
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_seconds: u64,
    /// Open client connections at most (each HTTP/1.1 watch holds one); more are answered 503
    /// and closed. Lowered to fit the process's file-descriptor limit.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Read-only requests (get, list) served at once at most; more get 429 with Retry-After
    /// (0: no limit). Watches and other long-running requests are not counted; no user holds
    /// more than its share while others wait.
    #[arg(long, default_value_t = capstan_apiserver::http::inflight::DEFAULT_READONLY)]
    pub max_requests_inflight: usize,
    /// Mutating requests served at once at most (0: no limit).
    #[arg(long, default_value_t = capstan_apiserver::http::inflight::DEFAULT_MUTATING)]
    pub max_mutating_requests_inflight: usize,
}

impl ServeArgs {
    /// The in-flight request limits.
    pub fn inflight(&self) -> capstan_apiserver::http::inflight::Limits {
        capstan_apiserver::http::inflight::Limits {
            readonly: self.max_requests_inflight,
            mutating: self.max_mutating_requests_inflight,
        }
    }

    /// The limits, with the descriptor limit raised to its hard maximum (as Go programs do)
    /// and the connection cap lowered to fit it: a connection from this process's own clients
    /// (controllers, node agent) costs two descriptors, so the cap is at most half of what the
    /// limit leaves after [`FD_RESERVE`].
    pub fn limits(&self) -> ServeLimits {
        let fds = raise_fd_limit();
        let fit = usize::try_from(fds.saturating_sub(FD_RESERVE) / 2).unwrap_or(usize::MAX);
        let max_connections = self.max_connections.min(fit.max(1));
        if max_connections < self.max_connections {
            tracing::warn!(
                requested = self.max_connections,
                max_connections,
                open_files_limit = fds,
                "--max-connections lowered to fit the open-files limit (ulimit -n)"
            );
        }
        ServeLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            max_connections,
            ..ServeLimits::default()
        }
    }
}

/// Raises the soft open-files limit to the hard one; returns the soft limit in force
/// (u64::MAX when unlimited).
fn raise_fd_limit() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum.unwrap_or(u64::MAX),
            Err(e) => tracing::debug!(error = %e, "cannot raise the open-files limit"),
        }
    }
    limit.current.unwrap_or(u64::MAX)
}
