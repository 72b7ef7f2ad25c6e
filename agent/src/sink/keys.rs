//! The keys with a message awaiting its ack: the publisher's gate that keeps each key's
//! order (see "One message per key in flight" in [`super::publisher`]).

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use lockstep_formats::frame::{KEY_NONE, KEY_UNKNOWN};

/// Key hashes are xxh3 already: hashed again as they are.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The keys with a message awaiting its ack (one each at most), and how many messages
/// of unknown key are in flight.
#[derive(Default)]
pub struct KeysInFlight {
    keys: HashSet<u64, BuildHasherDefault<KeyHasher>>,
    unknown: usize,
}

impl KeysInFlight {
    /// May a message of `key` be handed to the client, with `flying` messages in flight?
    pub fn may_send(&self, key: u64, flying: usize) -> bool {
        match key {
            KEY_UNKNOWN => flying == 0,
            _ if self.unknown > 0 => false,
            KEY_NONE => true,
            k => !self.keys.contains(&k),
        }
    }

    pub fn add(&mut self, key: u64) {
        match key {
            KEY_UNKNOWN => self.unknown += 1,
            KEY_NONE => {}
            k => {
                self.keys.insert(k);
            }
        }
    }

    pub fn remove(&mut self, key: u64) {
        match key {
            KEY_UNKNOWN => self.unknown = self.unknown.saturating_sub(1),
            KEY_NONE => {}
            k => {
                self.keys.remove(&k);
            }
        }
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.unknown = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_key_in_flight() {
        let mut k = KeysInFlight::default();
        assert!(k.may_send(7, 0));
        k.add(7);
        assert!(!k.may_send(7, 1), "a key waits for its ack");
        assert!(k.may_send(8, 1), "other keys go on");
        assert!(k.may_send(KEY_NONE, 1), "events without a key are not held");
        assert!(
            !k.may_send(KEY_UNKNOWN, 1),
            "an unknown key waits for everything"
        );
        k.remove(7);
        assert!(k.may_send(7, 0));
        k.add(KEY_UNKNOWN);
        assert!(
            !k.may_send(8, 1) && !k.may_send(KEY_NONE, 1),
            "nothing passes an unknown key"
        );
        k.remove(KEY_UNKNOWN);
        assert!(k.may_send(8, 0));
        k.add(9);
        k.clear();
        assert!(k.may_send(9, 0));
    }
}
