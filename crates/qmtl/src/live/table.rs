//! [`TableFollower`]: live rows by polling the history table.
//!
//! Each poll asks every feed's loader (the same [`CacheLoader`] its backfill used, so the
//! same table and the same bound-parameter query) for the rows of buckets after the
//! feed's watermark, then moves the watermark to the last bucket received. Polls happen
//! every poll interval (default 1 s, whatever the feeds' intervals), the first at once.
//!
//! The follower assumes that rows of one (node, interval) are written in time order, as
//! the recorder and `qmtl import` do: a row written later for a bucket at or before the
//! watermark is never seen. A poll that fails with a transient error (a lost connection,
//! a restarting server) is logged and tried again at the next poll, from the same
//! watermark, so no row is lost; other errors end the run.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{interval, Interval as Ticker, MissedTickBehavior};

use super::{LiveBatch, LiveError, LiveFeed, LiveSource};
use crate::batch::decode;
use crate::loader::CacheLoader;
use crate::time::Timestamp;

/// The default time between polls.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Epoch seconds a poll reads up to (the year 5138).
const POLL_END: Timestamp = 100_000_000_000;

struct Followed {
    feed: LiveFeed,
    loader: Arc<dyn CacheLoader>,
    watermark: Timestamp,
}

/// Polls the history table for rows newer than each feed's watermark.
pub struct TableFollower {
    feeds: Vec<Followed>,
    ticker: Ticker,
    row: Vec<f64>,
    failed_polls: u64,
}

impl TableFollower {
    /// A follower of `feeds`, each with its loader and watermark bucket (the last bucket
    /// already processed), polling every `poll` (at least 10 ms).
    pub fn new(
        feeds: Vec<(LiveFeed, Arc<dyn CacheLoader>, Timestamp)>,
        poll: Duration,
    ) -> TableFollower {
        let mut ticker = interval(poll.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let widest = feeds.iter().map(|(f, _, _)| f.fields.len()).max();
        TableFollower {
            feeds: feeds
                .into_iter()
                .map(|(feed, loader, watermark)| Followed {
                    feed,
                    loader,
                    watermark,
                })
                .collect(),
            ticker,
            row: vec![0.0; widest.unwrap_or(0)],
            failed_polls: 0,
        }
    }

    /// Polls that failed transiently and were tried again.
    pub fn failed_polls(&self) -> u64 {
        self.failed_polls
    }
}

#[async_trait::async_trait]
impl LiveSource for TableFollower {
    async fn next_batch(&mut self, batch: &mut LiveBatch) -> Result<bool, LiveError> {
        self.ticker.tick().await;
        for (index, followed) in self.feeds.iter_mut().enumerate() {
            let feed = &followed.feed;
            let start = followed.watermark.saturating_add(feed.interval.secs_i64());

            // Fetch the buckets after the watermark.
            let fetched = followed
                .loader
                .fetch(start, POLL_END, &feed.node_id, feed.interval)
                .await;
            let rows = match fetched {
                Ok(rows) => rows,
                Err(error) if error.is_retryable() => {
                    self.failed_polls += 1;
                    tracing::warn!(
                        node_id = %feed.node_id, interval = feed.interval.secs(),
                        watermark = followed.watermark, error = %error, "live.poll_failed"
                    );
                    continue;
                }
                Err(source) => {
                    return Err(LiveError::Poll {
                        node_id: feed.node_id.clone(),
                        interval: feed.interval,
                        source,
                    })
                }
            };
            let columns = decode(&rows, &feed.fields, start, POLL_END).map_err(|source| {
                LiveError::Decode {
                    node_id: feed.node_id.clone(),
                    interval: feed.interval,
                    source,
                }
            })?;

            // Hand them over and move the watermark.
            let width = feed.fields.len();
            for (i, &ts) in columns.ts.iter().enumerate() {
                for (f, column) in columns.values.iter().enumerate() {
                    self.row[f] = column[i];
                }
                batch.push(index, ts, &self.row[..width]);
            }
            if let Some(&last) = columns.ts.last() {
                followed.watermark = feed.interval.bucket(last);
                tracing::debug!(
                    node_id = %feed.node_id, interval = feed.interval.secs(),
                    rows = columns.len(), watermark = followed.watermark, "live.polled"
                );
            }
        }
        Ok(true)
    }

    fn describe(&self) -> String {
        match self.feeds.first() {
            Some(f) => format!("table follower over {}", f.loader.describe()),
            None => "table follower with no feeds".to_owned(),
        }
    }
}
