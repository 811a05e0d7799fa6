use thiserror::Error;

/// Why a reconcile failed; the runtime retries the object with backoff.
#[derive(Debug, Error)]
pub enum Error {
    #[error("api request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("{0}")]
    Other(String),
    /// The informer cache is behind this controller's own writes: retry shortly, from a cache
    /// that has caught up (the EndpointSlice tracker's StaleInformerCache).
    #[error("stale cache: {0}")]
    Stale(String),
}

impl Error {
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }

    /// A 409 Conflict (stale resourceVersion or precondition): retry soon from a fresher cache.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api(kube::Error::Api(s)) if s.code == 409)
    }

    /// A conflict or a stale cache: expected now and then, retried at once with backoff and
    /// not worth a warning.
    pub fn is_transient(&self) -> bool {
        self.is_conflict() || matches!(self, Error::Stale(_))
    }
}

/// The API's answer was "not found".
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
