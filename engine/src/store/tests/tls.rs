//! TLS to PostgreSQL (RDS for PostgreSQL 15+ refuses plain connections by default): the URL's
//! `sslmode` and `sslrootcert` are honoured. Debian's PostgreSQL, which the tests use, serves TLS
//! with its self-signed certificate for `localhost`, which the test takes as its root.

use super::*;

/// The server's certificate file when it serves TLS and the file is readable here.
async fn server_certificate(url: &str) -> Option<String> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.ok()?;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut c)
        .await
        .ok()?;
    let file: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&mut c)
        .await
        .ok()?;
    (ssl == "on" && std::fs::metadata(&file).is_ok()).then_some(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_honour_sslmode() {
    on_postgres(|db| async move {
        let Some(cert) = server_certificate(&db.url).await else {
            eprintln!("note: this PostgreSQL serves no TLS with a readable certificate; skipping");
            return;
        };
        // require: encrypted, certificate not checked. It fails on a client built without TLS.
        let tls = connect(&format!("{}?sslmode=require", db.url))
            .await
            .expect("a TLS connection with sslmode=require");
        assert!(tls.get_run("none").await.unwrap().is_none());
        // verify-full: the certificate chains to sslrootcert and names the host.
        let by_name = db.url.replace("@127.0.0.1:", "@localhost:");
        let verified = connect(&format!("{by_name}?sslmode=verify-full&sslrootcert={cert}"))
            .await
            .expect("verify-full against the server's own certificate, by the name it holds");
        assert!(verified.get_run("none").await.unwrap().is_none());
        // ... and a host the certificate does not name is refused, with an error that says so
        // rather than a hang or a fall-back to plain text.
        let refused = connect(&format!(
            "{}?sslmode=verify-full&sslrootcert={cert}",
            db.url
        ))
        .await;
        let err = refused
            .err()
            .expect("a certificate for another name is refused");
        let text = format!("{err}").to_lowercase();
        assert!(
            text.contains("certificate"),
            "the refusal does not name the certificate: {err}"
        );
    })
    .await;
}
