//! The server as a library: `flow_ui::server::serve` started in this process on a port the OS
//! picks, against a real store, answering over real HTTP, and stopping when asked.

use std::sync::Arc;
use std::time::Duration;

use flow_engine::scheduler::DagCatalog;
use flow_engine::secrets::Secrets;
use flow_ui::config::RateLimit;
use flow_ui::state::AppState;
use tokio_util::sync::CancellationToken;

#[test]
fn the_server_runs_in_process_and_stops_on_its_token() {
    let home = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}/flow.db", home.path().display());
        let store = flow_engine::store::connect(&url).await.unwrap();
        let registry = Arc::new(flow_operators::registry(Default::default()));
        let state = Arc::new(AppState::new(
            store.clone(),
            home.path().to_path_buf(),
            Secrets::default().masker(),
            DagCatalog::new(store, registry),
            RateLimit {
                per_minute: 600.try_into().unwrap(),
                burst: 10.try_into().unwrap(),
            },
            Duration::from_secs(30),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(flow_ui::server::serve(listener, state, shutdown.clone()));
        let answer = tokio::task::spawn_blocking(move || {
            let health: serde_json::Value = ureq::get(format!("{base}/api/v1/health"))
                .call()
                .unwrap()
                .body_mut()
                .read_json()
                .unwrap();
            let denied = ureq::get(format!("{base}/api/v1/dags"))
                .config()
                .http_status_as_error(false)
                .build()
                .call()
                .unwrap()
                .status()
                .as_u16();
            (health, denied)
        })
        .await
        .unwrap();
        assert_eq!(answer.0["status"], "ok", "{}", answer.0);
        assert_eq!(answer.1, 401, "the API wants a token in-process too");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops once its token is cancelled")
            .unwrap()
            .unwrap();
    });
}
