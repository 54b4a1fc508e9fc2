//! The deadline and cancellation every piece of upstream work runs under,
//! and the one place work is raced against them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::memory::Room;

/// Why work stopped before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Nobody waits any more (clients gone, a sibling job failed, shutdown).
    Cancelled,
    /// The request deadline passed.
    Deadline,
}

/// Deadline and cancellation for one job.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub deadline: Instant,
    /// Fires when nobody waits for the answer any more, or at shutdown.
    pub cancel: CancellationToken,
    /// The seconds the deadline was set from, for the client's message.
    pub timeout_seconds: u64,
    /// Who the job is billed to (a key's id, never its secret), for the
    /// upstream's invoice (fal: `X-Fal-Tags`); `None` without a key.
    pub account: Option<Arc<str>>,
    /// The generation's memory room, grown to its whole before an answer is
    /// read ([`Self::room_for_answer`]); `None`: nothing to grow.
    pub room: Option<Arc<Room>>,
}

impl JobContext {
    /// Run `work` until it finishes, the context is cancelled or the
    /// deadline passes, whichever comes first.
    pub async fn race<T>(&self, work: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            value = work => Ok(value),
            () = self.cancel.cancelled() => Err(Stop::Cancelled),
            () = tokio::time::sleep_until(self.deadline) => Err(Stop::Deadline),
        }
    }

    /// Wait until the generation's memory room can take its answers (the
    /// backend calls it before reading one), unless the context ends first.
    /// A deadline here comes after the job was done upstream.
    pub async fn room_for_answer(&self) -> Result<(), ApiError> {
        let Some(room) = &self.room else {
            return Ok(());
        };
        self.race(room.make_whole())
            .await
            .map_err(|stop| match stop {
                Stop::Deadline => ApiError::memory_deadline(self.timeout_seconds),
                Stop::Cancelled => self.error(stop),
            })
    }

    /// Sleep for `delay`, unless the context ends first.
    pub async fn sleep(&self, delay: Duration) -> Result<(), Stop> {
        self.race(tokio::time::sleep(delay)).await
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// What a client hears when its work stopped.
    pub fn error(&self, stop: Stop) -> ApiError {
        match stop {
            Stop::Cancelled => ApiError::ShuttingDown,
            Stop::Deadline => ApiError::deadline(self.timeout_seconds, ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBudget;
    use crate::metrics::Metrics;

    const MIB: u64 = 1024 * 1024;

    fn context(room: &Arc<Room>, within: Duration) -> JobContext {
        JobContext {
            deadline: Instant::now() + within,
            cancel: CancellationToken::new(),
            timeout_seconds: 7,
            account: None,
            room: Some(room.clone()),
        }
    }

    /// A job done at fal whose answer cannot get its memory room before
    /// the deadline is answered 504, naming the setting; its wait leaves
    /// nothing behind, so the next answer gets its room once there is some.
    #[tokio::test]
    async fn an_answer_that_waits_for_memory_past_the_deadline_is_a_504() {
        let budget = MemoryBudget::new(10 * MIB, 4, Arc::new(Metrics::new()));
        let reading = Room::try_new(&budget, MIB, 6 * MIB).unwrap();
        reading.make_whole().await;
        let room = Arc::new(Room::try_new(&budget, MIB, 6 * MIB).unwrap());

        let err = context(&room, Duration::from_millis(100))
            .room_for_answer()
            .await
            .unwrap_err();
        assert_eq!(actix_web::ResponseError::status_code(&err).as_u16(), 504);
        assert_eq!(
            err.to_string(),
            "The image was not generated within the gateway's 7 s deadline; its answer \
             waited for memory room (limits.max_memory_bytes) past the deadline."
        );
        assert_eq!((room.bytes(), budget.reserved()), (0, 6 * MIB));

        drop(reading);
        tokio::time::timeout(
            Duration::from_secs(60),
            context(&room, Duration::from_secs(60)).room_for_answer(),
        )
        .await
        .expect("the turn it waited in was given up")
        .unwrap();
        assert_eq!((room.bytes(), budget.reserved()), (6 * MIB, 6 * MIB));
    }
}
