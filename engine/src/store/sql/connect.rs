//! Opening a database: creating it if needed, applying migrations, the pools' settings.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::migrations::{PG_MIGRATIONS, SQLITE_MIGRATIONS};
use super::{Bell, PgStore, SqlStore, SqliteStore};
use crate::store::{Result, Store, StoreError};

/// How long a PostgreSQL query waits for a connection before it fails as unreachable.
const PG_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens (creating if needed) the database named by `url` and applies pending migrations.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        use_ring_for_tls();
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        Err(StoreError::BadUrl(url.to_string()))
    }
}

/// sqlx's TLS hands rustls the ring provider for the handshake, but rustls's certificate
/// verifier takes the process's default one, which rustls cannot choose by itself once the AWS
/// SDK has compiled in aws-lc-rs as well: it would panic at the first `verify-*` connection.
fn use_ring_for_tls() {
    // Err: a provider is installed already (by us, or by another part of the process).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Drops the PostgreSQL database a URL names (for scratch databases such as the UI
/// benchmark's); SQLite URLs are left to the caller, whose file it is.
pub async fn drop_database(url: &str) -> Result<()> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::BadUrl(url.to_string()));
    }
    let opts = PgConnectOptions::from_str(url)?;
    let name = opts.get_database().unwrap_or("flow").to_string();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.database("postgres"))
        .await?;
    let drop = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&admin)
        .await?;
    Ok(())
}

/// Makes the database and its WAL files readable by their owner alone (0600): they hold every
/// run's params and outputs. SQLite gives files it creates later the database's own mode.
fn owner_only(db: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        // Best effort: a database flow does not own (a shared file) keeps its mode.
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

/// Takes the lock file beside a SQLite database, waiting for another process that holds it.
async fn lock_beside(db: &std::path::Path) -> Result<std::fs::File> {
    let lock_path = {
        let mut p = db.as_os_str().to_owned();
        p.push(".migrate.lock");
        std::path::PathBuf::from(p)
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(format!("cannot open {}", lock_path.display())))?;
    tokio::task::spawn_blocking(move || lock.lock().map(|_| lock))
        .await?
        .map_err(io_error(format!("cannot lock {}", lock_path.display())))
}

impl SqliteStore {
    pub(crate) async fn connect(url: &str) -> Result<SqliteStore> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // FULL: a commit is on disk before we act on it (WAL + NORMAL could lose the last
            // commits on power loss).
            .synchronous(SqliteSynchronous::Full)
            // Concurrent CLI calls and the scheduler wait for each other instead of failing with
            // "database is locked".
            .busy_timeout(Duration::from_secs(60))
            // Reads through a memory map instead of a read() and a copy per page: the planner
            // and the claims reread the same pages after every commit of another connection.
            .pragma("mmap_size", "268435456")
            .foreign_keys(true);
        if let Some(dir) = opts.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(io_error(format!("cannot create {}", dir.display())))?;
        }
        // Switching a new database to WAL and migrating it are done by one process at a time,
        // under a lock file beside the database: sqlx takes no lock around SQLite migrations, and
        // a journal-mode change races with other connections ("database is locked"). WAL mode is
        // a property of the file, so the everyday pool below never needs to set it again.
        let lock = lock_beside(opts.get_filename()).await?;
        let setup = async {
            let setup_pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone().journal_mode(SqliteJournalMode::Wal))
                .await?;
            let migrated = SQLITE_MIGRATIONS.run(&setup_pool).await;
            setup_pool.close().await;
            migrated.map_err(StoreError::from)
        }
        .await;
        drop(lock);
        setup?;
        owner_only(opts.get_filename());
        let bell = Bell::sqlite(opts.get_filename());
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        Ok(SqlStore::new(pool, bell))
    }
}

/// libpq's default `sslmode` is `prefer`: TLS whenever the server offers it. On a loopback
/// address that protects nothing and costs a lot (chain40 on PostgreSQL took 0.36 s instead of
/// 0.16 s), so there the default is `disable`; a URL's `sslmode` or `PGSSLMODE` still decide.
fn loopback_without_tls(url: &str, opts: PgConnectOptions) -> PgConnectOptions {
    let host = opts
        .get_host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host.starts_with('/')
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let chosen =
        url.to_ascii_lowercase().contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    if loopback && !chosen {
        opts.ssl_mode(PgSslMode::Disable)
    } else {
        opts
    }
}

impl PgStore {
    pub(crate) async fn connect(url: &str) -> Result<PgStore> {
        let opts = loopback_without_tls(url, PgConnectOptions::from_str(url)?);
        // sqlx waits 30 s for a connection by default; while the server is down that held
        // every API request for 30 s before its 503. Five seconds still covers a busy pool.
        let pool = match PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_with(opts.clone())
            .await
        {
            Ok(pool) => pool,
            // A missing database is created, so that one URL is all a user has to give.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
                create_database(&opts).await?;
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                    .connect_with(opts.clone())
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        PG_MIGRATIONS.run(&pool).await?;
        let bell = Bell::postgres(pool.clone(), opts);
        Ok(SqlStore::new(pool, bell))
    }
}

async fn create_database(opts: &PgConnectOptions) -> Result<()> {
    let name = opts.get_database().unwrap_or("flow").to_string();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.clone().database("postgres"))
        .await?;
    let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    if let Err(err) = sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&admin)
        .await
    {
        // Another process may have created it meanwhile: 42P04 (duplicate_database), or
        // 23505 when both inserted into pg_database at the same moment.
        let dup = matches!(&err, sqlx::Error::Database(d)
            if matches!(d.code().as_deref(), Some("42P04" | "23505")));
        if !dup {
            return Err(err.into());
        }
    }
    admin.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> String {
        let opts = loopback_without_tls(url, PgConnectOptions::from_str(url).unwrap());
        format!("{:?}", opts.get_ssl_mode())
    }

    #[test]
    fn loopback_goes_without_tls_unless_the_url_asks() {
        if std::env::var_os("PGSSLMODE").is_some() {
            return;
        }
        assert_eq!(mode("postgres://u@127.0.0.1:5432/flow"), "Disable");
        assert_eq!(mode("postgres://u@localhost/flow"), "Disable");
        assert_eq!(mode("postgres://u@[::1]:5432/flow"), "Disable");
        assert_eq!(
            mode("postgres://u@127.0.0.1/flow?sslmode=require"),
            "Require"
        );
        assert_eq!(mode("postgres://u@db.internal/flow"), "Prefer");
        assert_eq!(
            mode("postgres://u@db.internal/flow?sslmode=verify-full"),
            "VerifyFull"
        );
    }
}
