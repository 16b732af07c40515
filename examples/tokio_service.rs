//! A tokio service that takes its ids from one shared seqd client: every request handler
//! (a task) gets an order id from the same `AsyncClient`, whose single connection pipelines
//! the concurrent calls, follows the leader of a cluster and rides out restarts.
//!
//! ```sh
//! seqd --in-memory &
//! cargo run --features tokio --example tokio_service -- 127.0.0.1:10001 [more endpoints...]
//! ```
//! With `SEQD_PASSWORD` set, the client authenticates with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use seqd::client::{AsyncClient, ClientError, Sequence};
use tokio::sync::Mutex;

/// Requests this demonstration serves, and at most how many at once.
const REQUESTS: usize = 2_000;
const CONCURRENCY: usize = 64;

/// The service's state: orders by id.
struct Orders {
    ids: AsyncClient,
    sequence: Sequence,
    stored: Mutex<BTreeMap<u64, String>>,
}

impl Orders {
    /// One "place order" request: an id from seqd, then the order stored under it.
    async fn place(&self, customer: usize) -> Result<u64, ClientError> {
        let id = self.ids.get_from(&self.sequence).await?;
        let previous = self
            .stored
            .lock()
            .await
            .insert(id, format!("order of customer {customer}"));
        assert!(previous.is_none(), "seqd issued {id} twice");
        Ok(id)
    }
}

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let mut endpoints: Vec<String> = std::env::args().skip(1).collect();
    if endpoints.is_empty() {
        endpoints.push("127.0.0.1:10001".into());
    }
    let mut builder = AsyncClient::builder(endpoints.clone());
    if let Ok(password) = std::env::var("SEQD_PASSWORD") {
        builder = builder.password(password);
    }
    let ids = builder.connect().await?;
    let sequence = ids.sequence("orders").await?;
    let service = Arc::new(Orders {
        ids,
        sequence,
        stored: Mutex::new(BTreeMap::new()),
    });

    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut handlers = tokio::task::JoinSet::new();
    for customer in 0..REQUESTS {
        let (service, limit) = (service.clone(), limit.clone());
        handlers.spawn(async move {
            let _slot = limit.acquire().await;
            service.place(customer).await
        });
    }
    while let Some(handled) = handlers.join_next().await {
        match handled {
            Ok(result) => {
                result?;
            }
            Err(panicked) => panic!("a request handler failed: {panicked}"),
        }
    }
    let stored = service.stored.lock().await;
    let (first, last) = match (stored.keys().next(), stored.keys().next_back()) {
        (Some(first), Some(last)) => (*first, *last),
        _ => (0, 0),
    };
    let stats = service.ids.stats();
    println!(
        "{} orders placed by {REQUESTS} requests ({CONCURRENCY} at a time) on one connection to \
         {endpoints:?}: ids {first}..={last}, all distinct; {} requests in {} writes, {} \
         reconnects, {} redirects",
        stored.len(),
        stats.requests,
        stats.writes,
        stats.reconnects,
        stats.redirects
    );
    Ok(())
}
