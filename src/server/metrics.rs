//! `--metrics-addr`: Prometheus's text exposition of the server's numbers, served over HTTP
//! on a thread of its own (never on an event loop). Every scrape reads the live values.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as Metrics;

use super::Shared;
use crate::service::counters;

/// Longest request head read from a scraper.
const MAX_REQUEST: usize = 8 * 1024;

type SequenceLabel = Vec<(&'static str, String)>;

/// Binds `addr` and serves scrapes on a new thread; returns the bound address.
pub(super) fn spawn(addr: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: cannot listen: {e}"))?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("seqd-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &shared) {
                            tracing::debug!("metrics scrape failed: {e}");
                        }
                    }
                    Err(e) => {
                        tracing::warn!("metrics endpoint: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(local)
}

fn answer(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET / ") {
        ("200 OK", render(shared))
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}

fn gauge(value: u64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

/// The exposition text of the current values.
fn render(shared: &Shared) -> String {
    let mut metrics = Metrics::with_prefix("seqd");
    let connections = shared.connections.open() as u64;
    metrics.register(
        "connections",
        "Client connections open now",
        gauge(connections),
    );
    metrics.register(
        "max_connections",
        "The --max-connections limit",
        gauge(shared.connections.limit as u64),
    );
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    metrics.register(
        "connections_received",
        "Connections accepted since start, refused ones included",
        counter(count(&counters::CONNECTIONS_RECEIVED)),
    );
    metrics.register(
        "rejected_connections",
        "Connections refused by --max-connections",
        counter(count(&counters::REJECTED_CONNECTIONS)),
    );
    metrics.register(
        "auth_failures",
        "Wrong passwords given",
        counter(count(&counters::AUTH_FAILURES)),
    );
    metrics.register(
        "denied_protected_mode",
        "Connections refused by protected mode",
        counter(count(&counters::DENIED_PROTECTED_MODE)),
    );
    metrics.register(
        "idle_closed",
        "Connections closed by --timeout",
        counter(count(&counters::IDLE_CLOSED)),
    );
    metrics.register(
        "client_output_bytes",
        "Reply bytes waiting to be sent, all clients together",
        gauge(counters::CLIENT_OUTPUT_BYTES.load(Ordering::Relaxed) as u64),
    );
    let limit = |bytes: Option<usize>| gauge(bytes.unwrap_or(0) as u64);
    metrics.register(
        "client_output_limit_bytes",
        "The --client-output-limit (0: none)",
        limit(shared.output.per_connection),
    );
    metrics.register(
        "maxmemory_clients_bytes",
        "The --maxmemory-clients cap (0: none)",
        limit(shared.output.total),
    );
    metrics.register(
        "client_output_limit_disconnections",
        "Clients closed for unsent replies over --client-output-limit",
        counter(count(&counters::OUTPUT_LIMIT_DISCONNECTIONS)),
    );
    metrics.register(
        "evicted_clients",
        "Clients closed to bring all unsent replies under --maxmemory-clients",
        counter(count(&counters::EVICTED_CLIENTS)),
    );
    metrics.register(
        "leases_refused_per_peer",
        "Lease requests refused because the client's address held --max-leases-per-peer",
        counter(count(&counters::LEASES_REFUSED_PER_PEER)),
    );
    metrics.register(
        "streams_refused_per_peer",
        "Stream CONs refused because the client's address held --max-streams-per-peer",
        counter(count(&counters::STREAMS_REFUSED_PER_PEER)),
    );
    let requests = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
    for protocol in counters::Protocol::ALL {
        requests
            .get_or_create(&vec![("protocol", protocol.name())])
            .inc_by(counters::requests(protocol));
    }
    metrics.register(
        "requests",
        "Main-port requests received, by protocol",
        requests,
    );
    let errors = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
    for (kind, n) in counters::errors() {
        errors.get_or_create(&vec![("kind", kind)]).inc_by(n);
    }
    metrics.register(
        "errors",
        "Error replies sent, by kind (the reply's first word, as Redis names errors)",
        errors,
    );
    let next = Family::<SequenceLabel, Gauge>::default();
    let headroom = Family::<SequenceLabel, Gauge>::default();
    for sequence in shared.registry.iter() {
        let label = vec![("sequence", sequence.name().to_owned())];
        let current = sequence.current();
        next.get_or_create(&label)
            .set(i64::try_from(current).unwrap_or(i64::MAX));
        let room = sequence.ceiling().saturating_sub(current);
        headroom
            .get_or_create(&label)
            .set(i64::try_from(room).unwrap_or(i64::MAX));
    }
    metrics.register(
        "sequence_next",
        "The next number each sequence issues",
        next,
    );
    metrics.register(
        "sequence_ceiling_headroom",
        "Numbers each sequence may issue before it needs a higher durable ceiling",
        headroom,
    );
    metrics.register(
        "sequences",
        "Sequences that exist",
        gauge(shared.registry.len() as u64),
    );
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &metrics);
    prometheus_text(&text)
}

/// The crate writes OpenMetrics, whose counter families are named without `_total`; the
/// Prometheus text format (what `text/plain; version=0.0.4` promises, and what promtool
/// checks) names the family as its samples are named. Nothing else differs for these metrics.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let family = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let name = rest.split(' ').next()?;
            counters
                .contains(&name)
                .then_some((prefix, name, &rest[name.len()..]))
        });
        match family {
            Some((prefix, name, rest)) => {
                text.push_str(prefix);
                text.push_str(name);
                text.push_str("_total");
                text.push_str(rest);
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn counter_families_are_named_like_their_samples() {
        let openmetrics = "# HELP a_failures Wrong.\n# TYPE a_failures counter\na_failures_total 1\n\
                           # HELP b Open.\n# TYPE b gauge\nb 2\n# EOF\n";
        assert_eq!(
            super::prometheus_text(openmetrics),
            "# HELP a_failures_total Wrong.\n# TYPE a_failures_total counter\na_failures_total 1\n\
             # HELP b Open.\n# TYPE b gauge\nb 2\n"
        );
    }
}
