//! The live progress of a run on stderr: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use flow_engine::state::TaskState;
use flow_engine::store::{Store, TiRow};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub done: usize,
    pub running: usize,
    pub failed: usize,
}

impl Counts {
    pub fn of(tis: &[TiRow]) -> Counts {
        let mut c = Counts {
            total: tis.len(),
            ..Counts::default()
        };
        for t in tis {
            if t.state.is_terminal() {
                c.done += 1;
            }
            if t.state == TaskState::Running {
                c.running += 1;
            }
            if t.state.is_failure() {
                c.failed += 1;
            }
        }
        c
    }

    fn line(&self, label: &str, elapsed: Duration) -> String {
        format!(
            "{label}: {}/{} tasks done, {} running, {} failed, {:.1}s",
            self.done,
            self.total,
            self.running,
            self.failed,
            elapsed.as_secs_f64()
        )
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    last: Option<Counts>,
    started: Instant,
    label: String,
}

impl Progress {
    pub fn new(label: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            last: None,
            started: Instant::now(),
            label: label.to_string(),
        }
    }

    pub fn update(&mut self, c: Counts) {
        let elapsed = self.started.elapsed();
        match &self.bar {
            Some(bar) => {
                bar.set_length(c.total as u64);
                bar.set_position(c.done as u64);
                bar.set_message(format!(
                    "{} running, {} failed, {:.1}s",
                    c.running,
                    c.failed,
                    elapsed.as_secs_f64()
                ));
            }
            None => {
                if self.last != Some(c) {
                    eprintln!("{}", c.line(&self.label, elapsed));
                }
            }
        }
        self.last = Some(c);
    }

    pub fn finish(&mut self, state: &str) {
        let elapsed = self.started.elapsed();
        let c = self.last.unwrap_or_default();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("{} -> {state}", c.line(&self.label, elapsed));
    }
}

/// Follows runs until every one has ended; returns whether all succeeded. A run's end arrives as
/// a wake-up; `poll` (flow.toml's poll_interval) covers one that was lost and paces the bar.
pub async fn follow(
    store: &dyn Store,
    run_ids: &[String],
    label: &str,
    poll: Duration,
) -> anyhow::Result<bool> {
    let mut progress = Progress::new(label);
    let mut warned = false;
    let started = Instant::now();
    // Listening before the first read: a run that ends between a read and the wait is heard.
    let mut wakeups = store.wakeups().await;
    loop {
        let mut counts = Counts::default();
        let mut ended = 0;
        let mut all_ok = true;
        for id in run_ids {
            let Some(run) = store.get_run(id).await? else {
                anyhow::bail!("run {id} disappeared");
            };
            let c = Counts::of(&store.task_instances(id).await?);
            counts.total += c.total;
            counts.done += c.done;
            counts.running += c.running;
            counts.failed += c.failed;
            if run.state.is_terminal() {
                ended += 1;
                all_ok &= run.state == flow_engine::state::RunState::Success;
            }
        }
        progress.update(counts);
        if ended == run_ids.len() {
            progress.finish(if all_ok { "success" } else { "failed" });
            return Ok(all_ok);
        }
        if !warned && started.elapsed() > Duration::from_secs(5) {
            let alive = store
                .last_heartbeat()
                .await?
                .is_some_and(|t| flow_engine::time::now() - t < chrono::Duration::seconds(30));
            if !alive {
                eprintln!(
                    "flow: no scheduler has sent a heartbeat in the last 30s; start one with `flow scheduler` (or use `flow run`)"
                );
            }
            warned = true;
        }
        wakeups.run_ended(run_ids, poll).await;
    }
}
