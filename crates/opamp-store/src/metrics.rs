//! Every metric this crate records: its name, kind and help text, in one table. The server
//! installs the recorder and calls [`describe`]; each backend calls its `register_*` function
//! when it is built, so the first scrape lists its series at zero instead of nothing.
//!
//! Recording happens where the event happens, always through these constants: a metric name is
//! written out nowhere else in this crate.

use metrics::Unit;

pub const CACHE_HITS_TOTAL: &str = "opampd_cache_hits_total";
pub const CACHE_MISSES_TOTAL: &str = "opampd_cache_misses_total";
pub const CACHE_ENTRIES: &str = "opampd_cache_entries";
pub const CACHE_WEIGHTED_BYTES: &str = "opampd_cache_weighted_bytes";

pub const STORE_OVERLOADED_TOTAL: &str = "opampd_store_overloaded_total";
pub const STORE_COMMITS_TOTAL: &str = "opampd_store_commits_total";
pub const STORE_BATCH_SIZE: &str = "opampd_store_batch_size";
pub const STORE_COMMIT_SECONDS: &str = "opampd_store_commit_seconds";
pub const STORE_CONFLICTS_TOTAL: &str = "opampd_store_conflicts_total";

pub const ES_BULK_REQUESTS_TOTAL: &str = "opampd_es_bulk_requests_total";
pub const ES_BULK_ITEMS_TOTAL: &str = "opampd_es_bulk_items_total";
pub const ES_BULK_SIZE: &str = "opampd_es_bulk_size";
pub const ES_BULK_DURATION_SECONDS: &str = "opampd_es_bulk_duration_seconds";
pub const ES_BULK_WAIT_SECONDS: &str = "opampd_es_bulk_wait_seconds";
pub const ES_CONFLICTS_TOTAL: &str = "opampd_es_conflicts_total";
pub const ES_GET_REQUESTS_TOTAL: &str = "opampd_es_get_requests_total";
pub const ES_MGET_REQUESTS_TOTAL: &str = "opampd_es_mget_requests_total";
pub const ES_MGET_SIZE: &str = "opampd_es_mget_size";
pub const ES_READ_DURATION_SECONDS: &str = "opampd_es_read_duration_seconds";
pub const ES_SHED_TOTAL: &str = "opampd_es_shed_total";
pub const ES_WRITES_BLOCKED_TOTAL: &str = "opampd_es_writes_blocked_total";
pub const ES_AUTH_REQUESTS_TOTAL: &str = "opampd_es_auth_requests_total";
pub const ES_AGENT_DOCUMENT_WRITES_TOTAL: &str = "opampd_es_agent_document_writes_total";

/// The `backend` label of the `opampd_store_*` series.
pub const EMBEDDED: &str = "embedded";
/// The `op` label values of [`ES_SHED_TOTAL`].
pub const ES_SHED_OPS: [&str; 3] = ["get", "put", "publish"];
/// The `outcome` label values of [`ES_AGENT_DOCUMENT_WRITES_TOTAL`].
pub const ES_AGENT_DOCUMENT_OUTCOMES: [&str; 3] = ["written", "superseded", "failed"];
/// The `call` label values of [`ES_AUTH_REQUESTS_TOTAL`].
pub const ES_AUTH_AUTHENTICATE: &str = "authenticate";
pub const ES_AUTH_ENROLLMENT_LOOKUP: &str = "enrollment_lookup";
pub const ES_AUTH_CALLS: [&str; 2] = [ES_AUTH_AUTHENTICATE, ES_AUTH_ENROLLMENT_LOOKUP];

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram(Option<Unit>),
}

/// One metric: name, kind, help text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric { name, kind: Kind::Counter, help }
}

const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric { name, kind: Kind::Gauge, help }
}

const fn histogram(name: &'static str, unit: Option<Unit>, help: &'static str) -> Metric {
    Metric { name, kind: Kind::Histogram(unit), help }
}

/// Every metric of this crate.
pub const ALL: &[Metric] = &[
    counter(CACHE_HITS_TOTAL, "agent reads answered by the read cache"),
    counter(CACHE_MISSES_TOTAL, "agent reads the read cache passed to the backend"),
    gauge(
        CACHE_ENTRIES,
        "agent records held by the read cache (approximate, as of its last write)",
    ),
    gauge(
        CACHE_WEIGHTED_BYTES,
        "estimated bytes of the records held by the read cache, against --cache-max-bytes",
    ),
    counter(STORE_OVERLOADED_TOTAL, "writes refused because the store's write queue was full"),
    counter(STORE_COMMITS_TOTAL, "write transactions committed by the embedded store"),
    histogram(STORE_BATCH_SIZE, None, "writes per embedded store commit"),
    histogram(STORE_COMMIT_SECONDS, Some(Unit::Seconds), "time to commit one batch of writes"),
    counter(STORE_CONFLICTS_TOTAL, "embedded store writes refused by their compare-and-swap"),
    counter(ES_BULK_REQUESTS_TOTAL, "_bulk requests sent to elasticsearch"),
    counter(ES_BULK_ITEMS_TOTAL, "write items sent in _bulk requests"),
    histogram(ES_BULK_SIZE, None, "items per _bulk request"),
    histogram(ES_BULK_DURATION_SECONDS, Some(Unit::Seconds), "time of one _bulk request"),
    gauge(
        ES_BULK_WAIT_SECONDS,
        "how long a write now waits for others to share its _bulk, by lane (state: at most \
         --es-bulk-max-wait; publish: agent documents, at most 250ms): adapted to how fast \
         writes join an open batch",
    ),
    counter(ES_CONFLICTS_TOTAL, "_bulk items answered 409 (a lost compare-and-swap race)"),
    counter(ES_GET_REQUESTS_TOTAL, "single realtime GET requests sent to elasticsearch"),
    counter(ES_MGET_REQUESTS_TOTAL, "realtime _mget requests sent to elasticsearch"),
    histogram(ES_MGET_SIZE, None, "ids per _mget request"),
    histogram(ES_READ_DURATION_SECONDS, Some(Unit::Seconds), "time of one GET or _mget"),
    counter(ES_SHED_TOTAL, "reads and writes refused because a queue was full, by op"),
    counter(
        ES_WRITES_BLOCKED_TOTAL,
        "write items refused by an index block (read-only, e.g. the flood-stage disk watermark)",
    ),
    counter(
        ES_AGENT_DOCUMENT_WRITES_TOTAL,
        "agent documents (what Kibana reads) written after their state record, by outcome \
         (written; superseded: a later publication of the agent was there already; failed: the \
         agent's next message publishes again)",
    ),
    counter(
        ES_AUTH_REQUESTS_TOTAL,
        "elasticsearch requests made to check agent keys, by call (authenticate: \
         _security/_authenticate, enrollment_lookup: enrollment index search); cached verdicts \
         cost none",
    ),
];

/// Gives every metric of `metrics` its help text (and unit) in the installed recorder. Call
/// once the recorder is installed.
pub fn describe_all(metrics: &[Metric]) {
    for m in metrics {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram(Some(unit)) => metrics::describe_histogram!(m.name, unit, m.help),
            Kind::Histogram(None) => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Describes this crate's metrics.
pub fn describe() {
    describe_all(ALL);
}

/// Creates the series `metric{labels}` without changing its value, so it is exported at zero
/// before anything happened. Safe to call again (a second server in one process).
pub fn register(metric: &Metric, labels: &[(&'static str, &'static str)]) {
    let labels: Vec<metrics::Label> =
        labels.iter().map(|(k, v)| metrics::Label::new(*k, *v)).collect();
    match metric.kind {
        Kind::Counter => metrics::counter!(metric.name, labels).increment(0),
        Kind::Gauge => metrics::gauge!(metric.name, labels).increment(0.0),
        // a handle is enough: the exporter lists a registered histogram with no samples
        Kind::Histogram(_) => drop(metrics::histogram!(metric.name, labels)),
    }
}

fn register_named(names: &[&str], labels: &[(&'static str, &'static str)]) {
    for m in ALL.iter().filter(|m| names.contains(&m.name)) {
        register(m, labels);
    }
}

/// The read cache's series.
pub(crate) fn register_cache() {
    register_named(
        &[CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL, CACHE_ENTRIES, CACHE_WEIGHTED_BYTES],
        &[],
    );
}

/// The embedded store's series.
pub(crate) fn register_embedded() {
    register_named(
        &[
            STORE_OVERLOADED_TOTAL,
            STORE_COMMITS_TOTAL,
            STORE_BATCH_SIZE,
            STORE_COMMIT_SECONDS,
            STORE_CONFLICTS_TOTAL,
        ],
        &[("backend", EMBEDDED)],
    );
}

/// The Elasticsearch store's series.
pub(crate) fn register_elasticsearch() {
    let es: Vec<&str> = ALL
        .iter()
        .map(|m| m.name)
        .filter(|n| {
            n.starts_with("opampd_es_")
                && ![ES_SHED_TOTAL, ES_AUTH_REQUESTS_TOTAL, ES_AGENT_DOCUMENT_WRITES_TOTAL]
                    .contains(n)
        })
        .collect();
    register_named(&es, &[]);
    for outcome in ES_AGENT_DOCUMENT_OUTCOMES {
        register_named(&[ES_AGENT_DOCUMENT_WRITES_TOTAL], &[("outcome", outcome)]);
    }
    for op in ES_SHED_OPS {
        register_named(&[ES_SHED_TOTAL], &[("op", op)]);
    }
}

/// Agent authentication's series (`elasticsearch::enrollment`).
pub(crate) fn register_auth() {
    for call in ES_AUTH_CALLS {
        register_named(&[ES_AUTH_REQUESTS_TOTAL], &[("call", call)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prometheus_names() {
        for (i, m) in ALL.iter().enumerate() {
            assert!(m.name.starts_with("opampd_"), "{}", m.name);
            assert!(m.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{}", m.name);
            assert!(!m.help.is_empty(), "{}", m.name);
            assert!(ALL[..i].iter().all(|o| o.name != m.name), "{} twice", m.name);
        }
    }
}
