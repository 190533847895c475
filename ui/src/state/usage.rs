//! When each token was last used, written in batches: a request only notes the time in memory,
//! and a task writes what was noted every few seconds in one transaction (a write per request
//! would put the database on every API call's path).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flow_engine::store::{Store, TokenUsed};

/// How often the noted uses are written. A process that dies loses at most this much of them.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct TokenUse {
    seen: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl TokenUse {
    /// Starts the task that writes the noted uses to `store`.
    pub fn start(store: Arc<dyn Store>) -> Arc<TokenUse> {
        let uses = Arc::new(TokenUse::default());
        let weak = Arc::downgrade(&uses);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(uses) = weak.upgrade() else { return };
                let batch = uses.take();
                if let Err(e) = store.touch_tokens(&batch).await {
                    tracing::warn!("cannot record when tokens were last used: {e}");
                }
            }
        });
        uses
    }

    pub fn note(&self, name: &str, at: DateTime<Utc>) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(name.to_string(), at);
        }
    }

    fn take(&self) -> Vec<TokenUsed> {
        self.seen
            .lock()
            .map(|mut s| s.drain().map(|(name, at)| TokenUsed { name, at }).collect())
            .unwrap_or_default()
    }
}
