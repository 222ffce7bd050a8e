//! High availability: a relay node over PostgreSQL with a synchronous standby. The primary is
//! killed (`pg_ctl stop -m immediate`) and the standby promoted; the node reconnects to it
//! through a connection string naming both servers with `target_session_attrs=read-write`.
//! Every acked event survives and sequences stay dense. Waits are bounded; nothing asserts a
//! duration.

mod support;

use anyhow::Result;
use std::collections::BTreeSet;
use support::cluster::*;
use support::pg::PgServer;
use tidings_engine::{Event, EventId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failover_to_a_synchronous_standby_keeps_acked_events() -> Result<()> {
    let mut primary = PgServer::start(true, &[])?;
    primary.create_database("ha")?;
    let standby = PgServer::standby_of(&primary)?;
    primary.require_sync_standby()?;
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=ha connect_timeout=5 \
         target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let dir = tempfile::tempdir()?;
    let ep = endpoint()?;
    let relay = node(dir.path(), &url).await?;
    let mut alice = Author::new(1, 11);
    let mut client = alice.connect(&ep, &relay).await?;
    let mut acked: Vec<EventId> = Vec::new();
    let create = alice.create(&[1, 2]);
    acked.push(create.id());
    submit_until_placed(&mut client, &[create]).await?;
    for round in 0..5 {
        let batch: Vec<Event> = (0..4)
            .map(|i| alice.send(&format!("{round}.{i}")))
            .collect();
        submit_until_placed(&mut client, &batch).await?;
        acked.extend(batch.iter().map(Event::id));
    }

    primary.stop_immediate()?;
    standby.promote()?;

    // The node's sessions find the primary gone, and reconnect to the promoted standby; a
    // submit refused meanwhile is resubmitted.
    let deadline = Deadline::new("writes on the promoted standby");
    for round in 0..5 {
        let batch: Vec<Event> = (0..4)
            .map(|i| alice.send(&format!("after {round}.{i}")))
            .collect();
        loop {
            match submit_until_placed(&mut client, &batch).await {
                Ok(_) => break,
                Err(_) => deadline.next().await?,
            }
        }
        acked.extend(batch.iter().map(Event::id));
    }
    let mut bob = Author::new(2, 22).connect(&ep, &relay).await?;
    let all = read_all(&mut bob).await?;
    let stored: BTreeSet<EventId> = all.iter().map(|(_, id)| *id).collect();
    for id in &acked {
        assert!(stored.contains(id), "an acked event is lost");
    }
    assert_eq!(all.len(), acked.len(), "nothing more, nothing twice");
    relay.shutdown().await?;
    Ok(())
}
