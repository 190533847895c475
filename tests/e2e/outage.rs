//! Database outages (issue 21, point 5): PostgreSQL stopped for longer than a lease mid-run.
//! The scheduler waits and reconnects, the running task keeps running, its end (written while
//! the database was down) is recorded once it is back, nothing runs twice, and the API answers
//! 503 with Retry-After meanwhile.

use std::time::Duration;

use crate::api_server::{Server, token};
use crate::harness::*;
use crate::private_pg::PrivatePg;

#[test]
fn a_database_outage_mid_run_loses_nothing_and_runs_nothing_twice() {
    let Some(pg) = PrivatePg::start() else {
        return;
    };
    let env = Env::new(Db::Sqlite).unwrap().with_database_url(&pg.url());
    // Leases shorter than the outage: the hard case, where every lease looks expired when the
    // database comes back.
    env.config("lease_timeout = \"3s\"\n");
    let ledger = env.path("ledger");
    env.dag(
        "steady.yaml",
        &format!(
            "id: steady\ndefaults: {{ retries: 0 }}\ntasks:\n  a: {{ operator: shell, command: 'sleep 4; echo a >> {l}' }}\n  b: {{ operator: shell, command: 'echo b >> {l}', depends_on: [a] }}\n",
            l = ledger.display()
        ),
    );
    let viewer = token(&env, "watch", "viewer");
    let scheduler = env.spawn(&["scheduler"]);
    let server = Server::start(&env, "server");
    let run_id = env.flow_ok(&["trigger", "steady"], 0).trim().to_string();
    env.wait_run_until(&run_id, Duration::from_secs(30), "start a", |run| {
        task(run, "a", None)["state"] == "running"
    });

    pg.stop();
    let during = server.get("/api/v1/dags", &viewer);
    during.error(503, "unavailable");
    assert_eq!(during.retry_after.as_deref(), Some("5"));
    // `a` ends while the database is down; its lease runs out meanwhile.
    std::thread::sleep(Duration::from_secs(8));
    pg.start_again();

    let run = env.wait_run(&run_id, Duration::from_secs(90));
    assert_eq!(run["state"], "success", "{run:#}");
    assert_eq!(
        task(&run, "a", None)["tries"],
        1,
        "a ran again after the outage: {run:#}"
    );
    assert_eq!(
        std::fs::read_to_string(&ledger).unwrap(),
        "a\nb\n",
        "each task once"
    );
    server.get("/api/v1/dags", &viewer).ok();
    server.stop();
    stop_gracefully(scheduler, "the scheduler");
}
