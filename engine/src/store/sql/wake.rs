//! The wire under [`crate::store::Wake`]: NOTIFY on PostgreSQL, datagrams on SQLite.
//!
//! PostgreSQL: `pg_notify('flow_wake', kind[:run])` after the write commits; each process that
//! listens holds one extra connection (a pool of one, outside the store's pool, so a busy store
//! cannot starve the listener nor the listener a query). After a lost connection the listener
//! reconnects with a backoff and reports [`Wake::Missed`], because NOTIFYs sent meanwhile are
//! gone.
//!
//! SQLite has no notifications, and the processes on one file share a host. Each listening
//! process binds a datagram socket in `DB.wake/` (a folder only the database's owner may enter);
//! a ring sends the wake-up to every socket there and removes those nobody holds any more (a
//! process that died). A full receive buffer drops the datagram: the receiver's poll covers it.

use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Pool, Postgres};
use tokio::sync::{OnceCell, broadcast, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::{Wake, Wakeups};

const CHANNEL: &str = "flow_wake";

/// How long the first `listen` waits for its listener before going on with polls alone.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest socket path: `sun_path` holds 108 bytes with the terminating zero.
const MAX_SOCKET_PATH: usize = 107;

pub(crate) struct Bell {
    wire: Wire,
    local: broadcast::Sender<Wake>,
    listening: OnceCell<()>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

enum Wire {
    /// An in-memory database: only this process can see it.
    Local,
    Sqlite {
        dir: PathBuf,
        sender: StdDatagram,
    },
    Postgres {
        pool: PgPool,
        opts: Box<PgConnectOptions>,
    },
}

impl Bell {
    fn new(wire: Wire) -> Bell {
        let stop = CancellationToken::new();
        Bell {
            wire,
            local: broadcast::channel(1024).0,
            listening: OnceCell::new(),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// The bell of a SQLite database file (`db`); an in-memory one rings in this process.
    pub(crate) fn sqlite(db: &Path) -> Bell {
        let sender = StdDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s));
        match sender {
            Ok(sender) if !db.as_os_str().is_empty() && db != Path::new(":memory:") => {
                let mut dir = db.as_os_str().to_owned();
                dir.push(".wake");
                Bell::new(Wire::Sqlite {
                    dir: dir.into(),
                    sender,
                })
            }
            _ => Bell::new(Wire::Local),
        }
    }

    pub(crate) fn postgres(pool: PgPool, opts: PgConnectOptions) -> Bell {
        Bell::new(Wire::Postgres {
            pool,
            opts: Box::new(opts),
        })
    }

    /// Sends a wake-up to every listener of the database. Best effort: a wake-up that cannot be
    /// sent is logged, and its receivers find the news on their next poll.
    pub(crate) async fn ring(&self, wake: &Wake) {
        match &self.wire {
            Wire::Local => {
                let _ = self.local.send(wake.clone());
            }
            Wire::Sqlite { dir, sender } => ring_sockets(dir, sender, &wake.encode()),
            Wire::Postgres { pool, .. } => {
                let sent = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(wake.encode())
                    .execute(pool)
                    .await;
                if let Err(e) = sent {
                    tracing::debug!("cannot send a wake-up: {e}");
                }
            }
        }
    }

    /// Every wake-up from now on; the first call starts this process's listener.
    pub(crate) async fn listen(&self) -> Wakeups {
        let rx = self.local.subscribe();
        self.listening.get_or_init(|| self.start()).await;
        Wakeups(rx)
    }

    async fn start(&self) {
        let (ready_tx, ready) = oneshot::channel();
        let local = self.local.clone();
        let stop = self.stop.clone();
        match &self.wire {
            Wire::Local => return,
            Wire::Sqlite { dir, .. } => match bind_socket(dir) {
                Ok(socket) => {
                    tokio::spawn(listen_socket(socket, local, stop));
                    return;
                }
                Err(e) => {
                    tracing::warn!("wake-ups: {e}; this process polls the database instead");
                    return;
                }
            },
            Wire::Postgres { opts, .. } => {
                tokio::spawn(listen_postgres((**opts).clone(), local, stop, ready_tx));
            }
        }
        if tokio::time::timeout(LISTEN_TIMEOUT, ready).await.is_err() {
            tracing::warn!("wake-ups: no listener yet; polling until it connects");
        }
    }
}

fn ring_sockets(dir: &Path, sender: &StdDatagram, payload: &str) {
    // No folder: nobody listens yet.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match sender.send_to(payload.as_bytes(), &path) {
            Ok(_) => {}
            // Nobody holds the socket: its process is gone.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                let _ = std::fs::remove_file(&path);
            }
            // A full buffer (the receiver is behind) or a foreign file: the poll covers it.
            Err(_) => {}
        }
    }
}

/// A socket of this process's own in `dir`, removed when dropped.
struct Socket {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind_socket(dir: &Path) -> std::io::Result<Socket> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(std::io::Error::other(format!(
            "{} is too long for a Unix socket",
            path.display()
        )));
    }
    // A socket left by an earlier process with this pid.
    let _ = std::fs::remove_file(&path);
    let socket = tokio::net::UnixDatagram::bind(&path)?;
    Ok(Socket { socket, path })
}

async fn listen_socket(socket: Socket, local: broadcast::Sender<Wake>, stop: CancellationToken) {
    let mut buf = [0u8; 1024];
    loop {
        let got = tokio::select! {
            _ = stop.cancelled() => return,
            got = socket.socket.recv(&mut buf) => got,
        };
        match got {
            Ok(n) => {
                if let Some(w) = std::str::from_utf8(&buf[..n]).ok().and_then(Wake::decode) {
                    let _ = local.send(w);
                }
            }
            Err(e) => {
                tracing::warn!("wake-ups: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Holds a LISTEN connection until `stop`, reconnecting with a backoff.
async fn listen_postgres(
    opts: PgConnectOptions,
    local: broadcast::Sender<Wake>,
    stop: CancellationToken,
    ready: oneshot::Sender<()>,
) {
    let pool: Pool<Postgres> = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts);
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            ended = listen_session(&pool, &local, &mut ready, &mut backoff) => ended,
        };
        let Err(e) = ended;
        tracing::warn!("wake-ups: {e}; listening again in {backoff:?}");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One LISTEN connection's life: returns only with the error that ended it.
async fn listen_session(
    pool: &PgPool,
    local: &broadcast::Sender<Wake>,
    ready: &mut Option<oneshot::Sender<()>>,
    backoff: &mut Duration,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    match ready.take() {
        Some(r) => {
            let _ = r.send(());
        }
        None => {
            tracing::info!("wake-ups: listening again");
            let _ = local.send(Wake::Missed);
        }
    }
    *backoff = Duration::from_millis(100);
    loop {
        match listener.try_recv().await? {
            Some(n) => {
                if let Some(w) = Wake::decode(n.payload()) {
                    let _ = local.send(w);
                }
            }
            // The connection was lost and is back: what was sent meanwhile is gone.
            None => {
                let _ = local.send(Wake::Missed);
            }
        }
    }
}
