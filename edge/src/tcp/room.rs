//! Where connections wait for their first request (sans-IO: the lobby's
//! thread owns the sockets and the clock, this owns the order).
//!
//! Two kinds of guest, each in arrival order:
//! - **seated**: admitted (holding a [`Slot`](crate::connections::Slot)),
//!   due to speak within `header_timeout` (and, once they began a head,
//!   due whole by a deadline of the lobby's: [`Room::reschedule`]); when
//!   the edge is full and a newcomer speaks, the longest-seated one is
//!   the first to go;
//! - **standing**: arrived while the edge was full, held without a slot
//!   for at most `grace` (less if newer ones need the standing places),
//!   and seated only if they speak. A silent newcomer therefore never
//!   evicts a seated guest: only one that spoke does.
//!
//! Standing guests all wait `grace`, so arrival order is their deadline
//! order. A seated guest is due up to a tenth of `header_timeout` early,
//! by a jitter the caller draws: a flood that arrived in one burst would
//! otherwise be closed in one burst and reconnect in one, every
//! `header_timeout`, and the kernel's work for 15 000 resets and
//! handshakes at once is what other clients feel. Nobody is closed late.
//! The oldest is always found first: no sampling, no timer per guest.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

/// Which kind of guest a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Seated,
    Standing,
}

/// The waiting guests, by arrival (the token is the arrival number).
#[derive(Debug)]
pub struct Room<T> {
    seated: BTreeMap<u64, (Instant, T)>,
    /// Seated guests' deadlines, soonest first (entries of guests that
    /// left are skipped when they come up).
    seated_due: BinaryHeap<Reverse<(Instant, u64)>>,
    standing: BTreeMap<u64, (Instant, T)>,
    next: u64,
    header_timeout: Duration,
    grace: Duration,
}

impl<T> Room<T> {
    pub fn new(header_timeout: Duration, grace: Duration) -> Self {
        Room {
            seated: BTreeMap::new(),
            seated_due: BinaryHeap::new(),
            standing: BTreeMap::new(),
            next: 0,
            header_timeout,
            grace,
        }
    }

    /// Seats an admitted guest that arrived `now`, due `jitter` (in
    /// [0, 1]) of a tenth of `header_timeout` before its full wait; its
    /// token.
    pub fn seat(&mut self, now: Instant, jitter: f64, guest: T) -> u64 {
        self.seat_until(self.due(now, jitter), guest)
    }

    /// `header_timeout` from `from`, less `jitter` (in [0, 1]) of a tenth
    /// of it.
    pub fn due(&self, from: Instant, jitter: f64) -> Instant {
        from + self.header_timeout - (self.header_timeout / 10).mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// Seats an admitted guest due at `due`; its token.
    pub fn seat_until(&mut self, due: Instant, guest: T) -> u64 {
        let token = self.token();
        self.seated.insert(token, (due, guest));
        self.seated_due.push(Reverse((due, token)));
        token
    }

    /// The guest behind `token`, left where it is.
    pub fn guest_mut(&mut self, token: u64) -> Option<(Kind, &mut T)> {
        if let Some((_, g)) = self.seated.get_mut(&token) {
            return Some((Kind::Seated, g));
        }
        self.standing
            .get_mut(&token)
            .map(|(_, g)| (Kind::Standing, g))
    }

    /// A seated guest is now due at `due` instead (it started its head);
    /// it keeps its place in arrival order.
    pub fn reschedule(&mut self, token: u64, due: Instant) {
        if let Some((at, _)) = self.seated.get_mut(&token) {
            *at = due;
            self.seated_due.push(Reverse((due, token)));
        }
    }

    /// Lets a guest that arrived `now` while the edge was full stand; its
    /// token.
    pub fn stand(&mut self, now: Instant, guest: T) -> u64 {
        let token = self.token();
        self.standing.insert(token, (now + self.grace, guest));
        token
    }

    /// How long a seated guest may wait for its first byte, at most.
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// The token the next guest will get.
    pub fn next_token(&self) -> u64 {
        self.next
    }

    fn token(&mut self) -> u64 {
        let token = self.next;
        self.next += 1;
        token
    }

    /// The guest behind `token` leaves (it spoke or hung up), if it is
    /// still here.
    pub fn leave(&mut self, token: u64) -> Option<(Kind, T)> {
        if let Some((_, g)) = self.seated.remove(&token) {
            return Some((Kind::Seated, g));
        }
        self.standing
            .remove(&token)
            .map(|(_, g)| (Kind::Standing, g))
    }

    /// The longest-seated guest, to make room for one that spoke.
    pub fn evict_oldest_seated(&mut self) -> Option<T> {
        self.seated.pop_first().map(|(_, (_, g))| g)
    }

    /// The longest-standing guest, to make room for a newer one.
    pub fn evict_oldest_standing(&mut self) -> Option<T> {
        self.standing.pop_first().map(|(_, (_, g))| g)
    }

    /// Every guest whose wait ran out by `now`, seated ones first.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(Reverse((due, token))) = self.seated_due.peek().copied() {
            if due > now {
                break;
            }
            self.seated_due.pop();
            // Skipped: a guest that left, or one rescheduled since.
            if self.seated.get(&token).is_some_and(|(at, _)| *at == due) {
                if let Some((_, guest)) = self.seated.remove(&token) {
                    out.push(guest);
                }
            }
        }
        while let Some(entry) = self.standing.first_entry() {
            if entry.get().0 > now {
                break;
            }
            out.push(entry.remove().1);
        }
        out
    }

    /// When the next wait runs out (perhaps that of a guest already gone:
    /// an early wake-up, never a late one).
    pub fn next_deadline(&self) -> Option<Instant> {
        let seated = self.seated_due.peek().map(|Reverse((d, _))| *d);
        let standing = self.standing.first_key_value().map(|(_, (d, _))| *d);
        match (seated, standing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn seated(&self) -> usize {
        self.seated.len()
    }

    pub fn standing(&self) -> usize {
        self.standing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn guests_leave_expire_and_are_evicted_in_arrival_order() {
        let t0 = Instant::now();
        let mut room = Room::new(10 * SECOND, SECOND);
        let a = room.seat(t0, 0.0, "a");
        let b = room.seat(t0 + SECOND, 0.0, "b");
        let c = room.seat(t0 + 2 * SECOND, 0.0, "c");
        let s = room.stand(t0 + 2 * SECOND, "standing");
        assert_eq!(room.leave(b), Some((Kind::Seated, "b")));
        assert_eq!(room.leave(b), None, "a token is used once");
        assert_eq!(room.evict_oldest_seated(), Some("a"));
        assert_eq!(room.leave(a), None, "an evicted guest is gone");
        // The standing guest's short wait runs out first.
        assert_eq!(room.next_deadline(), Some(t0 + 3 * SECOND));
        assert_eq!(room.expire(t0 + 3 * SECOND), vec!["standing"]);
        assert_eq!(room.leave(s), None);
        // The deadlines of "a" and "b", who left, only wake the lobby.
        assert_eq!(room.next_deadline(), Some(t0 + 10 * SECOND));
        assert!(room
            .expire(t0 + 12 * SECOND - Duration::from_nanos(1))
            .is_empty());
        assert_eq!(room.next_deadline(), Some(t0 + 12 * SECOND));
        assert_eq!(room.expire(t0 + 12 * SECOND), vec!["c"]);
        assert_eq!(room.leave(c), None);
        assert_eq!(
            (room.seated(), room.standing(), room.next_deadline()),
            (0, 0, None)
        );
    }

    #[test]
    fn a_standing_guest_that_speaks_is_told_apart_from_a_seated_one() {
        let t0 = Instant::now();
        let mut room = Room::new(10 * SECOND, SECOND);
        let seated = room.seat(t0, 0.0, 1);
        let standing = room.stand(t0, 2);
        let newer = room.stand(t0, 3);
        assert_eq!(room.leave(standing), Some((Kind::Standing, 2)));
        assert_eq!(room.leave(seated), Some((Kind::Seated, 1)));
        assert_eq!(room.evict_oldest_seated(), None);
        assert_eq!(room.evict_oldest_standing(), Some(3));
        assert_eq!(room.leave(newer), None);
    }

    #[test]
    fn expiry_is_exact_for_many_guests() {
        // 10 000 guests a millisecond apart: at each instant exactly those
        // whose wait ran out have gone, oldest first.
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut room = Room::new(SECOND, SECOND / 10);
        for i in 0..10_000u32 {
            let at = t0 + ms * i;
            if i % 2 == 0 {
                room.seat(at, 0.0, i);
            } else {
                room.stand(at, i);
            }
        }
        let gone = room.expire(t0 + SECOND + ms * 99);
        // Seated 0, 2, …, 98 (100 ms of them; a second's wait) and
        // standing 1, 3, …, 999 (a tenth of a second's).
        let seated: Vec<u32> = gone.iter().copied().filter(|i| i % 2 == 0).collect();
        let standing: Vec<u32> = gone.iter().copied().filter(|i| i % 2 == 1).collect();
        assert_eq!(seated, (0..100).step_by(2).collect::<Vec<_>>());
        assert_eq!(standing, (1..1000).step_by(2).collect::<Vec<_>>());
        assert_eq!(room.seated() + room.standing(), 10_000 - gone.len());
    }

    #[test]
    fn seated_guests_are_due_early_by_their_jitter_and_never_late() {
        let t0 = Instant::now();
        let mut room = Room::new(10 * SECOND, SECOND);
        room.seat(t0, 0.0, "full wait");
        room.seat(t0, 0.5, "half a second early");
        room.seat(t0, 7.0, "at most a tenth early");
        assert_eq!(
            room.expire(t0 + 9 * SECOND - Duration::from_nanos(1)),
            Vec::<&str>::new()
        );
        assert_eq!(room.expire(t0 + 9 * SECOND), vec!["at most a tenth early"]);
        assert_eq!(
            room.expire(t0 + 9500 * Duration::from_millis(1)),
            vec!["half a second early"]
        );
        assert_eq!(room.next_deadline(), Some(t0 + 10 * SECOND));
        assert_eq!(room.expire(t0 + 10 * SECOND), vec!["full wait"]);
        // A guest rescheduled later (it began its head) is not closed at
        // its old deadline, and one rescheduled sooner is.
        let later = room.seat(t0, 0.0, "rescheduled later");
        let sooner = room.seat(t0, 0.0, "rescheduled sooner");
        room.reschedule(later, t0 + 20 * SECOND);
        room.reschedule(sooner, t0 + 11 * SECOND);
        assert_eq!(room.expire(t0 + 19 * SECOND), vec!["rescheduled sooner"]);
        assert_eq!(room.leave(sooner), None);
        assert_eq!(room.guest_mut(later).map(|(k, _)| k), Some(Kind::Seated));
        assert_eq!(room.expire(t0 + 20 * SECOND), vec!["rescheduled later"]);
        // Arrival order still decides who makes room.
        room.seat(t0, 0.0, "first");
        room.seat(t0, 1.0, "second, due sooner");
        assert_eq!(room.evict_oldest_seated(), Some("first"));
    }
}
