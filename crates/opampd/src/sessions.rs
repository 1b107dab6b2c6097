//! The open WebSocket sessions of one server: admission under `--max-ws-sessions`, and closing
//! them all at shutdown (1001 within the grace period, then dropped). Knows nothing of what a
//! session exchanges; the WebSocket transport runs the sessions and watches the [`Phase`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How long aborted sessions get to notice the abort after the grace period.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// Where the server is in its life, as seen by every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// Shutdown started: answer what was received, then close with 1001.
    Closing,
    /// The grace period is over: drop the connection now.
    Abort,
}

/// The open WebSocket sessions: one semaphore slot per session (the `--max-ws-sessions`
/// bound) and the phase every session watches. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sessions {
    slots: Arc<Semaphore>,
    max: u32,
    phase: watch::Sender<Phase>,
}

impl Sessions {
    pub fn new(max: u32) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
            phase: watch::Sender::new(Phase::Open),
        }
    }

    /// A slot for one more session, or `None` at the `--max-ws-sessions` limit. The session
    /// holds it until it ends.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// The phase, for a session to watch.
    pub(crate) fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Sessions open now (including upgrades being completed).
    pub fn open(&self) -> usize {
        (self.max as usize).saturating_sub(self.slots.available_permits())
    }

    /// Asks every session to finish the messages it has, close with 1001 and end, waits up to
    /// `grace` for all of them, then drops the rest.
    pub async fn close_all(&self, grace: Duration) {
        self.phase.send_replace(Phase::Closing);
        let open = self.open();
        if open > 0 {
            tracing::info!(open, "closing websocket sessions");
        }
        if tokio::time::timeout(grace, self.all_closed()).await.is_err() {
            tracing::warn!(left = self.open(), "grace period over, dropping websocket sessions");
            self.phase.send_replace(Phase::Abort);
            if tokio::time::timeout(ABORT_WAIT, self.all_closed()).await.is_err() {
                tracing::warn!(left = self.open(), "websocket sessions still open after abort");
            }
        }
    }

    async fn all_closed(&self) {
        // every slot back means every session ended; the permits are returned at once
        let _ = self.slots.acquire_many(self.max).await;
    }
}

/// Completes once the phase satisfies `done` (or the sender is gone, which only happens once
/// the server is gone). The watch guard is dropped before returning, never held across awaits.
pub(crate) async fn until(phase: &mut watch::Receiver<Phase>, done: impl FnMut(&Phase) -> bool) {
    let _ = phase.wait_for(done).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn close_all_returns_at_once_without_sessions() {
        let sessions = Sessions::new(4);
        let started = tokio::time::Instant::now();
        sessions.close_all(Duration::from_secs(30)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(*sessions.phase.borrow(), Phase::Closing);
    }

    #[tokio::test(start_paused = true)]
    async fn close_all_aborts_sessions_after_the_grace_period() {
        let sessions = Sessions::new(4);
        let slot = sessions.admit().unwrap();
        assert_eq!(sessions.open(), 1);
        let mut phase = sessions.phase();
        // a session that ignores Closing and only ends on Abort
        let session = tokio::spawn(async move {
            until(&mut phase, |p| *p == Phase::Abort).await;
            drop(slot);
        });
        sessions.close_all(Duration::from_secs(5)).await;
        assert_eq!(*sessions.phase.borrow(), Phase::Abort);
        session.await.unwrap();
        assert_eq!(sessions.open(), 0);
    }
}
