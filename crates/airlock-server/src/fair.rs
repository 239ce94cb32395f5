//! Fair shares of the host's VM slots between tenants.
//!
//! The server holds at most [`FairShare::capacity`] VMs for tenants at
//! once (`max_concurrent_vms`, less the warm pools' VMs). A run or a
//! session takes a [`Slot`] before its VM starts and gives it back when
//! it ends. When slots are short, one tenant cannot take them all:
//!
//! - a request that finds no free slot, or others already waiting, waits
//!   in its tenant's line (first come, first served within a tenant);
//! - a freed slot goes to the next waiting tenant in turn (round robin)
//!   among those holding fewer than their share (`max(1, capacity *
//!   share)`); only when every waiting tenant holds its share already
//!   does it go, in turn, to one of them (no slot stays idle while
//!   someone waits);
//! - a request still waiting after the queue time gets
//!   [`ServerError::QueueTimeout`] (429 with `Retry-After`).
//!
//! A waiter that is dropped (its client left) leaves the line, and a slot
//! granted to it at that moment is given back at once.

use crate::error::{Result, ServerError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// The VM slots tenants share, and their lines.
#[derive(Debug, Clone)]
pub struct FairShare {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    share_cap: usize,
    queue_timeout: Duration,
    state: Mutex<State>,
}

/// Who holds and who waits.
#[derive(Debug, Default)]
struct State {
    /// Slots held, by tenant (tenants holding none are removed).
    held: HashMap<String, usize>,
    /// All slots held.
    total: usize,
    /// Each waiting tenant's tickets, oldest first.
    lines: HashMap<String, VecDeque<u64>>,
    /// The tenants with a line, in turn order (the next first).
    turn: VecDeque<String>,
    /// Tickets given a slot their waiter has not taken yet.
    granted: HashSet<u64>,
    /// How to wake each waiting ticket.
    wakers: HashMap<u64, Arc<Notify>>,
    next_ticket: u64,
}

impl State {
    fn holds(&self, tenant: &str) -> usize {
        self.held.get(tenant).copied().unwrap_or(0)
    }

    /// Gives free slots to waiters, fairly (see the module docs).
    fn dispatch(&mut self, capacity: usize, share_cap: usize) {
        while self.total < capacity && !self.turn.is_empty() {
            let index = self
                .turn
                .iter()
                .position(|tenant| self.holds(tenant) < share_cap)
                .unwrap_or(0);
            let Some(tenant) = self.turn.remove(index) else {
                return;
            };
            let line = self.lines.entry(tenant.clone()).or_default();
            let Some(ticket) = line.pop_front() else {
                self.lines.remove(&tenant);
                continue;
            };
            if line.is_empty() {
                self.lines.remove(&tenant);
            } else {
                // Its next request waits for its next turn.
                self.turn.push_back(tenant.clone());
            }
            *self.held.entry(tenant).or_default() += 1;
            self.total += 1;
            self.granted.insert(ticket);
            if let Some(waker) = self.wakers.remove(&ticket) {
                waker.notify_one();
            }
        }
    }

    fn release(&mut self, tenant: &str) {
        if let Some(count) = self.held.get_mut(tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.held.remove(tenant);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    /// Takes `ticket` out of `tenant`'s line; whether it was there.
    fn leave_line(&mut self, tenant: &str, ticket: u64) -> bool {
        self.wakers.remove(&ticket);
        let Some(line) = self.lines.get_mut(tenant) else {
            return false;
        };
        let Some(position) = line.iter().position(|t| *t == ticket) else {
            return false;
        };
        line.remove(position);
        if line.is_empty() {
            self.lines.remove(tenant);
            self.turn.retain(|t| t != tenant);
        }
        true
    }
}

impl FairShare {
    /// `capacity` slots (at least 1); a tenant holds at most
    /// `max(1, capacity * share)` of them while others wait; a request
    /// waits at most `queue_timeout`.
    pub fn new(capacity: usize, share: f64, queue_timeout: Duration) -> Self {
        let capacity = capacity.max(1);
        // Truncation intended: a share of slots, rounded down.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let share_cap = ((capacity as f64) * share.clamp(0.0, 1.0)).floor() as usize;
        Self {
            inner: Arc::new(Inner {
                capacity,
                share_cap: share_cap.max(1),
                queue_timeout,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain counters: still usable after a panic elsewhere.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The slots tenants share.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// The most slots one tenant holds while others wait.
    pub fn share_cap(&self) -> usize {
        self.inner.share_cap
    }

    /// Slots `tenant` holds now.
    pub fn held_by(&self, tenant: &str) -> usize {
        self.lock().holds(tenant)
    }

    /// Slots held and requests waiting now, all tenants together.
    pub fn totals(&self) -> (usize, usize) {
        let state = self.lock();
        (state.total, state.lines.values().map(VecDeque::len).sum())
    }

    /// Requests of `tenant` waiting now.
    pub fn waiting(&self, tenant: &str) -> usize {
        self.lock().lines.get(tenant).map_or(0, VecDeque::len)
    }

    /// Takes a slot for `tenant`, waiting in its line (see the module
    /// docs) up to the queue time. Cancel-safe: dropped while waiting, it
    /// takes nothing.
    ///
    /// # Errors
    /// [`ServerError::QueueTimeout`] when no slot came in time.
    pub async fn acquire(&self, tenant: &str) -> Result<Slot> {
        let (ticket, waker) = {
            let mut state = self.lock();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            let waker = Arc::new(Notify::new());
            state.wakers.insert(ticket, Arc::clone(&waker));
            if !state.lines.contains_key(tenant) {
                state.turn.push_back(tenant.to_owned());
            }
            state
                .lines
                .entry(tenant.to_owned())
                .or_default()
                .push_back(ticket);
            state.dispatch(self.inner.capacity, self.inner.share_cap);
            (ticket, waker)
        };
        let mut waiting = Waiting {
            fair: self,
            tenant,
            ticket,
            done: false,
        };
        let granted = async {
            loop {
                if waiting.take_grant() {
                    return;
                }
                waker.notified().await;
            }
        };
        if tokio::time::timeout(self.inner.queue_timeout, granted)
            .await
            .is_err()
            && !waiting.take_grant()
        {
            // `waiting` leaves the line when dropped.
            let waited = self.inner.queue_timeout;
            return Err(ServerError::QueueTimeout {
                tenant: tenant.to_owned(),
                waited_s: waited.as_secs(),
                slots: self.inner.capacity,
                retry_after_s: waited.as_secs().max(1),
            });
        }
        Ok(Slot {
            fair: self.clone(),
            tenant: tenant.to_owned(),
        })
    }
}

/// A request in its tenant's line; leaves it when dropped.
struct Waiting<'a> {
    fair: &'a FairShare,
    tenant: &'a str,
    ticket: u64,
    /// It got its slot (owned by a [`Slot`] now).
    done: bool,
}

impl Waiting<'_> {
    /// Whether this ticket was given a slot (taken by the caller now).
    fn take_grant(&mut self) -> bool {
        if !self.done {
            self.done = self.fair.lock().granted.remove(&self.ticket);
        }
        self.done
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let inner = &self.fair.inner;
        let mut state = self.fair.lock();
        if state.granted.remove(&self.ticket) {
            // Granted as its waiter left: the slot goes to the next one.
            state.release(self.tenant);
        } else {
            state.leave_line(self.tenant, self.ticket);
        }
        state.dispatch(inner.capacity, inner.share_cap);
    }
}

/// A VM slot of one tenant, given back (to the next waiter) when dropped.
#[derive(Debug)]
pub struct Slot {
    fair: FairShare,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let inner = &self.fair.inner;
        let mut state = self.fair.lock();
        state.release(&self.tenant);
        state.dispatch(inner.capacity, inner.share_cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    /// Lets spawned waiters run until they wait.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn slots_are_taken_at_once_while_free() {
        let fair = FairShare::new(2, 0.5, LONG);
        let a = fair.acquire("a").await.unwrap();
        let b = fair.acquire("a").await.unwrap();
        assert_eq!(fair.held_by("a"), 2, "alone, a tenant may use every slot");
        drop((a, b));
        assert_eq!(fair.held_by("a"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_greedy_tenant_cannot_starve_another() {
        // 4 slots, share 0.5: a tenant holds at most 2 while others wait.
        let fair = FairShare::new(4, 0.5, LONG);
        let mut greedy: Vec<Slot> = Vec::new();
        for _ in 0..4 {
            greedy.push(fair.acquire("greedy").await.unwrap());
        }
        // The greedy tenant queues 10 more; then the other asks for 2.
        let mut greedy_waiters = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let fair = fair.clone();
            greedy_waiters.spawn(async move { fair.acquire("greedy").await });
        }
        settle().await;
        let other = {
            let fair = fair.clone();
            tokio::spawn(async move {
                let one = fair.acquire("other").await.unwrap();
                let two = fair.acquire("other").await.unwrap();
                (one, two)
            })
        };
        settle().await;
        assert_eq!(fair.waiting("greedy"), 10);
        assert_eq!(fair.waiting("other"), 1);
        // Two greedy slots end: both go to the other tenant, though the
        // greedy one asked first.
        greedy.pop();
        settle().await;
        assert_eq!(fair.held_by("other"), 1);
        greedy.pop();
        let (one, two) = other.await.unwrap();
        assert_eq!(fair.held_by("other"), 2);
        assert_eq!(fair.held_by("greedy"), 2);
        // With the other at its share and waiting no more, freed slots go
        // back to the greedy tenant's line: none stays idle.
        drop(one);
        settle().await;
        assert_eq!(fair.held_by("greedy"), 3);
        assert_eq!(fair.waiting("greedy"), 9);
        drop(two);
        greedy.clear();
        greedy_waiters.abort_all();
        while greedy_waiters.join_next().await.is_some() {}
        assert_eq!(fair.held_by("greedy"), 0, "aborted waiters hold nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn freed_slots_go_round_robin_between_waiting_tenants() {
        let fair = FairShare::new(1, 0.5, LONG);
        let first = fair.acquire("a").await.unwrap();
        let mut order = tokio::task::JoinSet::new();
        for tenant in ["a", "a", "b", "c", "b"] {
            let fair = fair.clone();
            order.spawn(async move {
                let slot = fair.acquire(tenant).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(slot);
                (tenant, tokio::time::Instant::now())
            });
            settle().await;
        }
        drop(first);
        let mut served = Vec::new();
        while let Some(done) = order.join_next().await {
            served.push(done.unwrap());
        }
        served.sort_by_key(|(_, at)| *at);
        let tenants: Vec<&str> = served.iter().map(|(t, _)| *t).collect();
        assert_eq!(tenants, ["a", "b", "c", "a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_past_the_queue_time_gets_queue_timeout_and_leaves_the_line() {
        let fair = FairShare::new(1, 1.0, Duration::from_secs(10));
        let held = fair.acquire("a").await.unwrap();
        let started = tokio::time::Instant::now();
        let err = fair.acquire("b").await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_secs(10));
        match &err {
            ServerError::QueueTimeout { retry_after_s, .. } => assert_eq!(*retry_after_s, 10),
            other => panic!("{other:?}"),
        }
        assert_eq!(err.status().as_u16(), 429);
        assert_eq!(fair.waiting("b"), 0);
        drop(held);
        fair.acquire("b").await.expect("the slot is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_when_granted_gives_the_slot_to_the_next() {
        let fair = FairShare::new(1, 1.0, LONG);
        let held = fair.acquire("a").await.unwrap();
        let gone = {
            let fair = fair.clone();
            tokio::spawn(async move { fair.acquire("b").await })
        };
        settle().await;
        let next = {
            let fair = fair.clone();
            tokio::spawn(async move { fair.acquire("c").await })
        };
        settle().await;
        // The slot is granted to b's waiter, which is aborted before it
        // runs again.
        drop(held);
        gone.abort();
        let _ = gone.await;
        let slot = tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("c is served")
            .unwrap()
            .unwrap();
        assert_eq!(fair.held_by("b"), 0);
        drop(slot);
        assert_eq!(fair.held_by("c"), 0);
    }

    #[test]
    fn the_share_is_at_least_one_slot() {
        assert_eq!(FairShare::new(1, 0.5, LONG).share_cap(), 1);
        assert_eq!(FairShare::new(8, 0.25, LONG).share_cap(), 2);
        assert_eq!(FairShare::new(3, 1.0, LONG).share_cap(), 3);
    }
}
