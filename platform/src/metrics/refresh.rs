//! The scrape-time refreshes of [`Metrics`]: the slow ones ([`Metrics::on_scrape`]),
//! cached for [`SCRAPE_REFRESH_INTERVAL`] and single-flight, and the cheap ones
//! ([`Metrics::on_every_scrape`]), run at every scrape.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::RefreshError;
#[cfg(doc)]
use super::{Metrics, SCRAPE_REFRESH_INTERVAL};

/// One registered refresh.
pub(super) type Refresh =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), RefreshError>> + Send>> + Send + Sync>;

/// `refresh`, type-erased.
pub(super) fn boxed<F, Fut>(refresh: F) -> Refresh
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), RefreshError>> + Send + 'static,
{
    Arc::new(move || Box::pin(refresh()))
}

/// A handle's refreshes.
#[derive(Default)]
pub(super) struct Refreshes {
    /// The slow ones: cached and single-flight.
    slow: parking_lot::Mutex<Vec<(&'static str, Refresh)>>,
    /// The cheap ones: run at every scrape.
    every_scrape: parking_lot::Mutex<Vec<(&'static str, Refresh)>>,
    /// When the last run of the slow ones started. The run in progress holds the lock,
    /// so a scrape that finds it locked waits for that run instead of starting another.
    last_run: Arc<tokio::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl Refreshes {
    /// Registers `refresh`, run at every scrape when `every_scrape`, else cached.
    pub(super) fn add(&self, what: &'static str, refresh: Refresh, every_scrape: bool) {
        let list = if every_scrape {
            &self.every_scrape
        } else {
            &self.slow
        };
        list.lock().push((what, refresh));
    }

    /// Runs every refresh now, all within `timeout`, whatever the cache holds.
    pub(super) async fn run_all(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let every = self.every_scrape.lock().clone();
        let slow = self.slow.lock().clone();
        run(every.into_iter().chain(slow), deadline, timeout).await;
    }

    /// The refreshes a scrape runs, within `timeout`: the cheap ones, and the slow ones
    /// unless their last run started less than `interval` ago. One run of the slow ones
    /// at a time: a caller that finds one in progress waits for it and uses its values.
    /// The run is a task of its own, so a scrape abandoned half-way (the scraper hung up)
    /// does not cancel it, and the next scrape does not start over.
    pub(super) async fn run_for_scrape(&self, interval: Duration, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let every = self.every_scrape.lock().clone();
        run(every, deadline, timeout).await;
        let slow = self.slow.lock().clone();
        if slow.is_empty() {
            return;
        }
        let Ok(mut last) =
            tokio::time::timeout_at(deadline, Arc::clone(&self.last_run).lock_owned()).await
        else {
            // The run in progress outlasts this scrape's patience: answer what we have.
            return;
        };
        if last.is_some_and(|started| started.elapsed() < interval) {
            return;
        }
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            run(slow, started + timeout, timeout).await;
            *last = Some(started);
        });
        // An error only when the task panicked; the scrape answers the values it has.
        drop(task.await);
    }
}

/// Runs `refreshes` one after the other until `deadline`, logging each failure or
/// timeout at WARN (the gauges keep their last values).
async fn run(
    refreshes: impl IntoIterator<Item = (&'static str, Refresh)>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) {
    for (what, refresh) in refreshes {
        match tokio::time::timeout_at(deadline, refresh()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(metric = what, error = %err, "cannot refresh a metric; keeping its last value");
            }
            Err(_) => {
                tracing::warn!(
                    metric = what,
                    timeout_ms = timeout.as_millis() as u64,
                    "metric refresh timed out; keeping its last value"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::IntGauge;

    use super::super::{Metrics, SCRAPE_REFRESH_INTERVAL};
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_last_value() {
        let metrics = Metrics::new().expect("metrics");
        let gauge = metrics
            .register(IntGauge::new("trellis_test_backlog", "Backlog.").expect("valid"))
            .expect("registered");
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let set = gauge.clone();
        metrics.on_scrape("backlog", move || {
            let call = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let set = set.clone();
            async move {
                if call == 0 {
                    set.set(7);
                    Ok(())
                } else {
                    Err("the database is down".into())
                }
            }
        });
        // The second refresh (once the interval has passed) fails: the value stays.
        for _ in 0..2 {
            let text = metrics.scrape().await.expect("text");
            assert!(text.contains("trellis_test_backlog 7\n"), "{text}");
            tokio::time::advance(SCRAPE_REFRESH_INTERVAL).await;
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    /// Registers a slow refresh (it takes 100 ms) that counts its runs.
    fn counted_refresh(metrics: &Metrics) -> Arc<std::sync::atomic::AtomicUsize> {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        metrics.on_scrape("count", move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(())
            }
        });
        runs
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_scrapes_and_scrapes_within_the_interval_share_one_refresh() {
        let metrics = Metrics::new().expect("metrics");
        let runs = counted_refresh(&metrics);
        let scrapes: Vec<_> = (0..20)
            .map(|_| {
                let metrics = metrics.clone();
                tokio::spawn(async move { metrics.scrape().await.map(drop) })
            })
            .collect();
        for scrape in scrapes {
            scrape.await.expect("joined").expect("text");
        }
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "20 at once"
        );
        for _ in 0..30 {
            metrics.scrape().await.expect("text");
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "30 more within the interval"
        );
        tokio::time::advance(SCRAPE_REFRESH_INTERVAL).await;
        metrics.scrape().await.expect("text");
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the interval passed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_scrape_does_not_make_the_next_one_refresh_again() {
        let metrics = Metrics::new().expect("metrics");
        let runs = counted_refresh(&metrics);
        // The scraper hangs up half-way through the refresh.
        let abandoned = tokio::time::timeout(Duration::from_millis(50), metrics.scrape()).await;
        assert!(abandoned.is_err(), "the scrape was still refreshing");
        metrics.scrape().await.expect("text");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn every_scrape_refreshes_run_at_each_scrape() {
        let metrics = Metrics::new().expect("metrics");
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        metrics.on_every_scrape("in memory", move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(()) }
        });
        for _ in 0..3 {
            metrics.scrape().await.expect("text");
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_refresh_does_not_hold_the_scrape() {
        let metrics = Metrics::new().expect("metrics");
        metrics.on_scrape("forever", std::future::pending);
        let text = metrics.scrape().await.expect("text");
        assert!(text.contains("# TYPE"), "{text}");
    }
}
