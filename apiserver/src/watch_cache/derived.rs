//! A value derived from what some watch caches hold — the RBAC index, the compiled admission
//! policies, the admission webhooks — built again only when one of those caches changed since
//! (each cache counts its changes), and by one request at a time while the others wait for it.

use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde_json::Value;

use super::Cacher;
use crate::ApiServer;

/// What a derived value is built from: the objects of each resource, in the order given.
pub type Sources<'a> = &'a [Vec<Arc<Value>>];

/// A value built from the watch caches of `resources` (group, version, plural).
pub struct Derived<T> {
    resources: &'static [(&'static str, &'static str, &'static str)],
    cachers: OnceLock<Vec<Arc<Cacher>>>,
    current: RwLock<Option<(Vec<u64>, Arc<T>)>>,
    rebuilding: Mutex<()>,
}

impl<T> std::fmt::Debug for Derived<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "derived from {:?}", self.resources)
    }
}

impl<T: Default> Derived<T> {
    pub const fn new(resources: &'static [(&'static str, &'static str, &'static str)]) -> Self {
        Derived {
            resources,
            cachers: OnceLock::new(),
            current: RwLock::new(None),
            rebuilding: Mutex::new(()),
        }
    }

    fn cachers(&self, api: &ApiServer) -> Option<&Vec<Arc<Cacher>>> {
        if let Some(c) = self.cachers.get() {
            return Some(c);
        }
        // Kept only once every cache is found: a miss is asked again, never remembered.
        let found: Vec<Arc<Cacher>> = (self.resources.iter())
            .map(|(group, version, plural)| {
                let info = api.registry.get(group, version, plural)?;
                api.cacher(&info).ok()
            })
            .collect::<Option<_>>()?;
        Some(self.cachers.get_or_init(|| found))
    }

    fn cached(&self, changes: &[u64]) -> Option<Arc<T>> {
        let current = self.current.read().ok()?;
        let (seen, value) = current.as_ref()?;
        (seen.as_slice() == changes).then(|| value.clone())
    }

    /// The value as of the caches now: the last one built, or `build` of their objects.
    /// Before the caches exist (the resources are not served yet) it is `T::default()`.
    pub fn get(&self, api: &ApiServer, build: impl FnOnce(Sources) -> T) -> Arc<T> {
        let Some(cachers) = self.cachers(api) else {
            return Arc::new(T::default());
        };
        let changes = || cachers.iter().map(|c| c.changes()).collect::<Vec<u64>>();
        if let Some(v) = self.cached(&changes()) {
            return v;
        }
        let _one = self.rebuilding.lock();
        let now = changes();
        if let Some(v) = self.cached(&now) {
            return v;
        }
        let lists: Vec<Vec<Arc<Value>>> = cachers.iter().map(|c| c.values("").0).collect();
        let value = Arc::new(build(&lists));
        if let Ok(mut slot) = self.current.write() {
            *slot = Some((now, value.clone()));
        }
        value
    }
}
