//! Concurrency per caller (API key, or standalone token): how many of its requests are being
//! served at once (`http.max_requests_in_flight_per_key`) and how many SSE streams it holds
//! (`http.max_streams_per_key`). The rate limit bounds requests per second; this bounds what
//! one caller holds open at a time — slow bodies, streams — so that it cannot take every
//! connection, task or stream slot of a backend from the others.
//!
//! Counters exist only while a caller holds something, so the table is as large as the set of
//! callers active right now, never the set of keys ever seen.

use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::ops::ratelimit::Bucket;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Request,
    Stream,
}

/// The per-caller counters.
pub struct Slots {
    max_requests: usize,
    max_streams: usize,
    /// Fx-hashed: callers are our own ids (token positions, server-made key ids), never
    /// values a client picks, so a keyed hash buys nothing here.
    held: Mutex<FxHashMap<(Bucket, Kind), usize>>,
}

/// One request or stream of a caller; its place is given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    key: (Bucket, Kind),
}

impl Slots {
    pub fn new(max_requests: usize, max_streams: usize) -> Arc<Self> {
        Arc::new(Slots { max_requests, max_streams, held: Mutex::default() })
    }

    /// A place for one more request of `caller`, unless it has the most already.
    pub fn request(self: &Arc<Self>, caller: Bucket) -> Option<Slot> {
        self.take((caller, Kind::Request), self.max_requests)
    }

    /// A place for one more SSE stream of `caller`, unless it has the most already.
    pub fn stream(self: &Arc<Self>, caller: Bucket) -> Option<Slot> {
        self.take((caller, Kind::Stream), self.max_streams)
    }

    /// The answer past `max_requests_in_flight_per_key` (429), naming the limit.
    pub fn too_many_requests(&self) -> String {
        format!(
            "ERR too many requests in flight for this key (limit {}); retry when one is done",
            self.max_requests
        )
    }

    /// The answer past `max_streams_per_key` (429), naming the limit.
    pub fn too_many_streams(&self) -> String {
        format!("ERR too many concurrent streams for this key (limit {}); close one first", self.max_streams)
    }

    fn take(self: &Arc<Self>, key: (Bucket, Kind), max: usize) -> Option<Slot> {
        let mut held = self.held.lock().expect("slots lock");
        let n = held.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { slots: Arc::clone(self), key })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("slots lock");
        if let Entry::Occupied(mut e) = held.entry(self.key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_has_its_own_places_and_gets_them_back() {
        let slots = Slots::new(2, 1);
        let (a, b) = (Bucket::Token(0), Bucket::Token(1));
        let held = [slots.request(a).unwrap(), slots.request(a).unwrap()];
        assert!(slots.request(a).is_none());
        assert!(slots.request(b).is_some(), "another caller is not starved");
        let stream = slots.stream(a).expect("streams are counted apart from requests");
        assert!(slots.stream(a).is_none());
        drop(held);
        assert!(slots.request(a).is_some());
        drop(stream);
        assert!(slots.stream(a).is_some());
        assert!(slots.held.lock().unwrap().is_empty(), "idle callers leave nothing behind");
    }
}
