//! Outbox tokens: every chunk the Postgres writer writes carries one, stable across retries, so
//! that a chunk written again after a broken commit finds its first attempt's mark.

/// Hands out outbox tokens: unique per process (the owner in the high half) and never reused.
#[derive(Debug)]
pub struct Tokens {
    owner: i32,
    next: u32,
}

impl Tokens {
    pub fn new(owner: i32) -> Tokens {
        Tokens { owner, next: 0 }
    }

    /// Reserves `n` consecutive tokens and returns the first.
    pub fn take(&mut self, n: usize) -> i64 {
        let first = (i64::from(self.owner) << 32) | i64::from(self.next);
        self.next = self.next.wrapping_add(n as u32);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_per_owner_and_reserve_ranges() {
        let mut a = Tokens::new(7);
        let mut b = Tokens::new(8);
        let a1 = a.take(3);
        let a2 = a.take(1);
        assert_eq!(a2 - a1, 3);
        assert_ne!(a1, b.take(1));
        assert_eq!(a1 >> 32, 7);
        let mut neg = Tokens::new(-5);
        assert_eq!(neg.take(1) >> 32, -5);
    }
}
