//! A service's domain events as outbox calls, so its storage can enqueue them without
//! knowing their wire form.
//!
//! The domain states what must happen to other services as plain data (a welcome is
//! due, a user's tokens must be revoked); the service's `peers.rs` says which call each
//! event becomes (a function `fn(&E) -> OutboxEntry`); its `lib.rs` hands that function
//! to storage inside an [`EventOutbox`]; storage calls [`EventOutbox::enqueue`] in the
//! transaction that makes the change and [`EventOutbox::wake`] after the commit. Only
//! `peers.rs` imports protobuf types.

use std::fmt;

use sea_orm::{ConnectionTrait, DbErr};

use super::{OutboxEntry, OutboxWaker, enqueue};

/// The outbox for domain events of type `E`: the mapping of each event to its call, and
/// the waker of the service's [`Dispatcher`](super::Dispatcher).
pub struct EventOutbox<E> {
    waker: OutboxWaker,
    route: fn(&E) -> OutboxEntry,
}

impl<E> EventOutbox<E> {
    /// An outbox that turns each event into the call `route` makes of it, and wakes the
    /// dispatcher through `waker` (from `Context::outbox`, which also starts the
    /// dispatcher).
    pub fn new(waker: OutboxWaker, route: fn(&E) -> OutboxEntry) -> Self {
        Self { waker, route }
    }

    /// The call `event` becomes (peer, method and encoded request), as it will be stored.
    pub fn entry(&self, event: &E) -> OutboxEntry {
        (self.route)(event)
    }

    /// Writes the call for `event` through `conn`: pass the transaction that makes the
    /// change the event reports, so both commit or neither does (see [`enqueue`]).
    ///
    /// # Errors
    /// The database error.
    pub async fn enqueue<C: ConnectionTrait>(&self, conn: &C, event: &E) -> Result<(), DbErr> {
        enqueue(conn, self.entry(event)).await
    }

    /// Asks the dispatcher to deliver now: call it after the transaction committed.
    pub fn wake(&self) {
        self.waker.wake();
    }
}

// By hand: derives would require `E: Clone`/`E: Debug`, which the function pointer does
// not need.
impl<E> Clone for EventOutbox<E> {
    fn clone(&self) -> Self {
        Self {
            waker: self.waker.clone(),
            route: self.route,
        }
    }
}

impl<E> fmt::Debug for EventOutbox<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventOutbox")
            .field("waker", &self.waker)
            .finish_non_exhaustive()
    }
}
