//! WATCH: a client watch served from the resource's watch cache (for Events, which have none,
//! from a store watch of its own) as newline-delimited JSON events (ADDED/MODIFIED/DELETED,
//! BOOKMARKs, streaming lists' initial-events-end). An expired resourceVersion is answered
//! with an ERROR event carrying a 410 by the HTTP layer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use capstan_api::validation::FieldError;
use serde_json::{Value, json};

use crate::ApiServer;
use crate::errors::{ApiError, ApiResult, from_storage};
use crate::object::ObjectExt;
use crate::registry::ResourceInfo;
use crate::request::{Params, Target, View, partial_metadata};
use crate::watch_cache::{CacheEvent, CacheWatcher, Cached, Kind};

use super::filter::Filter;

/// Default watch length when the client names none (kube-apiserver picks 30–60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// How often a watch with allowWatchBookmarks gets a BOOKMARK (kube-apiserver: about a minute;
/// client-go expects them within its watch timeout).
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

impl ApiServer {
    /// A client watch, as a stream of JSON lines.
    pub async fn watch(
        &self,
        t: &Target,
        p: &Params,
        view: View,
    ) -> ApiResult<impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + use<>>
    {
        // Streaming lists (KEP-3157): the current objects as ADDED, then a BOOKMARK annotated
        // k8s.io/initial-events-end, then changes. Kubernetes' rules for the parameters apply.
        let send_initial = match p.get("sendInitialEvents") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid sendInitialEvents {other:?}"
                )));
            }
        };
        if send_initial == Some(true) {
            let mut causes = Vec::new();
            if p.get("resourceVersionMatch") != Some("NotOlderThan") {
                causes.push(FieldError {
                    field: "resourceVersionMatch".into(),
                    value: p.get("resourceVersionMatch").unwrap_or_default().into(),
                    message: "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
                });
            }
            if !p.flag("allowWatchBookmarks") {
                causes.push(FieldError {
                    field: "allowWatchBookmarks".into(),
                    value: String::new(),
                    message: "Required value: sendInitialEvents requires allowWatchBookmarks=true"
                        .into(),
                });
            }
            if !causes.is_empty() {
                return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", causes));
            }
        }
        let filter = Filter::from_params(&t.info, p)?;
        let timeout = p
            .int("timeoutSeconds")?
            .filter(|s| *s > 0) // 0 means the default, as in Kubernetes
            .map(|s| Duration::from_secs(s as u64))
            .unwrap_or(DEFAULT_WATCH_TIMEOUT);
        let bookmarks = p.flag("allowWatchBookmarks");
        let bookmark_every = self.bookmark_interval();
        let rv = p.resource_version()?;
        let (initial, mut live, snapshot_rv) = match send_initial {
            // The state at (at least) the given RV — or, unset, the store's current one.
            Some(true) => {
                let min = match rv {
                    Some(r) => r,
                    None => match self.store.revision_hint() {
                        Some(r) => r,
                        None => self
                            .store
                            .current_revision()
                            .await
                            .map_err(|e| from_storage(e, &t.info.group, &t.info.plural, ""))?,
                    },
                };
                self.watch_source(&t.info, None, min).await?
            }
            // Explicitly no initial events: from the RV, or from now.
            Some(false) => {
                let from = match rv {
                    // Without a cache, "now" is the store's revision (no state to list).
                    None if !t.info.watch_cached() => Some(
                        self.store
                            .current_revision()
                            .await
                            .map_err(|e| from_storage(e, &t.info.group, &t.info.plural, ""))?,
                    ),
                    other => other,
                };
                let (events, rx, at) = self.watch_source(&t.info, from, rv.unwrap_or(0)).await?;
                (if rv.is_none() { Vec::new() } else { events }, rx, at)
            }
            None => self.watch_source(&t.info, rv, rv.unwrap_or(0)).await?,
        };
        let initial_end = send_initial == Some(true);
        let info = t.info.clone();
        let ns_prefix = t.info.list_prefix(t.namespace.as_deref());
        let name = t.name.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(bookmark_every);
            tick.reset();
            let mut last_rv = 0;
            let in_scope = |o: &Value| {
                info.key_of(o).starts_with(&ns_prefix)
                    && name.as_deref().is_none_or(|n| o.name() == Some(n))
            };
            // A watch of every object (an informer's) reads no index.
            let everything =
                filter.is_empty() && name.is_none() && ns_prefix == info.list_prefix(None);
            let render = |e: &CacheEvent| -> Option<Bytes> {
                let (kind, obj) = translate(e, &|c: &Cached| {
                    everything || {
                        let o = c.index();
                        in_scope(&o) && filter.matches(&info, &o)
                    }
                })?;
                let line = match view {
                    View::Table => event_line(
                        kind,
                        &crate::table::render(
                            &info.strategy.table(),
                            std::slice::from_ref(&obj.value()),
                            None,
                            &e.rv.to_string(),
                            None,
                        ),
                    ),
                    View::Metadata => event_line(kind, &partial_metadata(&obj.value())),
                    // The cached JSON as it is: nothing parsed or serialized per watcher.
                    View::Object => raw_event_line(kind, obj.json()),
                };
                Some(Bytes::from(line))
            };
            for e in &initial {
                last_rv = last_rv.max(e.rv);
                if let Some(line) = render(e)
                    && tx.send(line).await.is_err()
                {
                    return;
                }
            }
            // The initial events bring the watcher to the snapshot's revision (even when none
            // passed its filter): bookmarks start from there, never from 0.
            last_rv = last_rv.max(snapshot_rv);
            if initial_end {
                let object = json!({"kind": &info.kind, "apiVersion": info.api_version(),
                    "metadata": {"resourceVersion": last_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                if tx
                    .send(Bytes::from(event_line("BOOKMARK", &object)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = tick.tick(), if bookmarks && view != View::Table => {
                        // Only what this watcher has been sent: the cache may be ahead of
                        // events still queued for it, and a bookmark must never skip them.
                        let rv = last_rv;
                        let object = json!({"kind": &info.kind, "apiVersion": info.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
                        if tx.send(Bytes::from(event_line("BOOKMARK", &object))).await.is_err() { return; }
                    }
                    ev = live.recv() => match ev {
                        Ok(e) => {
                            last_rv = e.rv;
                            if let Some(line) = render(&e)
                                && tx.send(line).await.is_err()
                            {
                                return;
                            }
                        }
                        // Too slow, or the cache relisted: end the watch; the client re-watches
                        // from its last resourceVersion (or relists on 410).
                        Err(_) => return,
                    }
                }
            }
        });
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(b), rx))
        }))
    }
}

impl ApiServer {
    /// A client watch's initial events and live stream: from the resource's watch cache, or
    /// for one served without (Events) from a store watch of its own.
    async fn watch_source(
        &self,
        info: &Arc<ResourceInfo>,
        from: Option<i64>,
        min_rv: i64,
    ) -> ApiResult<(Vec<Arc<CacheEvent>>, CacheWatcher, i64)> {
        if info.watch_cached() {
            self.cacher(info)?.watch_at_least(from, min_rv).await
        } else {
            crate::watch_cache::uncached::watch(info, &self.store, from, min_rv).await
        }
    }
}

/// What a client watching with a filter sees of one event: an object entering the filter is
/// ADDED, one leaving it is DELETED (kube-apiserver's cacheWatcher does the same).
fn translate<'a>(
    e: &'a CacheEvent,
    pass: &dyn Fn(&Cached) -> bool,
) -> Option<(&'static str, &'a Cached)> {
    let now = pass(&e.object);
    let before = e.prev.as_deref().is_some_and(pass);
    match e.kind {
        Kind::Added if now => Some(("ADDED", &e.object)),
        Kind::Modified if now && before => Some(("MODIFIED", &e.object)),
        Kind::Modified if now => Some(("ADDED", &e.object)),
        Kind::Modified if before => Some(("DELETED", &e.object)),
        Kind::Deleted if before || now => Some(("DELETED", &e.object)),
        _ => None,
    }
}

/// One watch event as a line: `{"type":"MODIFIED","object":{...}}`, the type first as
/// kube-apiserver writes it — a client that reads the tag first (kube-rs's adjacently tagged
/// WatchEvent) decodes the object straight into its type instead of buffering it — and the
/// object serialized where it is, not copied.
pub fn event_line(kind: &str, object: &Value) -> Vec<u8> {
    line_around(kind, 256, |line| {
        let _ = serde_json::to_writer(line, object);
    })
}

/// [`event_line`] of an object already serialized (`json` must be one JSON object).
pub fn raw_event_line(kind: &str, json: &[u8]) -> Vec<u8> {
    line_around(kind, json.len() + 32, |line| line.extend_from_slice(json))
}

/// `{"type":KIND,"object":` + what `object` writes + `}` and a newline.
fn line_around(kind: &str, capacity: usize, object: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut line = Vec::with_capacity(capacity);
    line.extend_from_slice(b"{\"type\":");
    let _ = serde_json::to_writer(&mut line, kind);
    line.extend_from_slice(b",\"object\":");
    object(&mut line);
    line.extend_from_slice(b"}\n");
    line
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn watch_lines_name_the_type_before_the_object() {
        let line = event_line(
            "MODIFIED",
            &json!({"kind": "Pod", "metadata": {"name": "a\"b"}}),
        );
        let text = std::str::from_utf8(&line).unwrap();
        assert!(
            text.starts_with(r#"{"type":"MODIFIED","object":{"#),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
        let parsed: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parsed["object"]["metadata"]["name"], "a\"b");
    }

    #[test]
    fn filtered_watchers_see_objects_enter_and_leave() {
        let obj = |app: &str| {
            let o = json!({"metadata": {"labels": {"app": app}}, "spec": {"big": "x"}});
            Arc::new(Cached::new(&o, &["/metadata/labels".to_string()]))
        };
        let pass = |c: &Cached| c.index()["metadata"]["labels"]["app"] == "web";
        let ev = |kind, now, prev| CacheEvent {
            kind,
            rv: 2,
            object: now,
            prev,
        };
        assert_eq!(
            translate(&ev(Kind::Modified, obj("web"), Some(obj("db"))), &pass)
                .unwrap()
                .0,
            "ADDED"
        );
        assert_eq!(
            translate(&ev(Kind::Modified, obj("db"), Some(obj("web"))), &pass)
                .unwrap()
                .0,
            "DELETED"
        );
        assert_eq!(
            translate(&ev(Kind::Modified, obj("web"), Some(obj("web"))), &pass)
                .unwrap()
                .0,
            "MODIFIED"
        );
        assert!(translate(&ev(Kind::Modified, obj("db"), Some(obj("db"))), &pass).is_none());
        assert!(translate(&ev(Kind::Added, obj("db"), None), &pass).is_none());
    }

    #[test]
    fn raw_lines_are_the_same_as_serialized_ones() {
        let o = json!({"kind": "Pod", "metadata": {"name": "a\"b", "labels": {"x": "é"}}});
        let c = Cached::new(&o, &[]);
        assert_eq!(
            raw_event_line("ADDED", c.json()),
            event_line("ADDED", &o),
            "a cached object's event line is byte for byte the serialized one"
        );
    }
}
