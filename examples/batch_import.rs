//! A batch importer: gives every record of a large import a unique id from an `IdSource`,
//! which takes ranges from seqd in the background, so the import loop almost never waits
//! for the network (and keeps going through a short server outage).
//!
//! ```sh
//! seqd --in-memory &
//! cargo run --release --example batch_import -- 127.0.0.1:10001 [RECORDS]
//! ```
//! Records are generated here (a real importer reads them from a file or a queue); each
//! gets an id, and the ids are checked to increase. No feature is needed: the IdSource runs
//! on the blocking, leader-following client.

use std::time::Instant;

use seqd::client::{Client, ClientError, IdSource, IdSourceOptions};

fn main() -> Result<(), ClientError> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:10001".into());
    let records: u64 = match args.next().map(|n| n.parse()) {
        None => 1_000_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("usage: batch_import [ADDR] [RECORDS]   (RECORDS: a number)");
            std::process::exit(2);
        }
    };
    let mut client = Client::connect_any(&[addr.as_str()])?;
    let imports = client.open("imports")?;
    let mut ids = IdSource::new(
        move |count| client.get_batch_from(imports, count),
        IdSourceOptions::default(),
    );

    let started = Instant::now();
    let (mut first, mut last) = (None, 0u64);
    let mut checksum = 0u64;
    for record in 0..records {
        let id = ids.next_id()?;
        assert!(id > last, "ids of one IdSource increase");
        first.get_or_insert(id);
        last = id;
        // "Store" the record under its id.
        checksum = checksum.wrapping_add(id ^ record);
    }
    let elapsed = started.elapsed();
    let stats = ids.stats();
    println!(
        "imported {records} records in {elapsed:.2?} ({:.0} ids/s): ids {}..={last} from {} \
         ranges; {} of {} calls waited for the network (checksum {checksum:x})",
        records as f64 / elapsed.as_secs_f64().max(1e-9),
        first.unwrap_or(0),
        stats.ranges,
        stats.waited,
        stats.handed_out
    );
    Ok(())
}
