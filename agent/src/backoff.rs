//! Jittered exponential backoff.

use std::time::Duration;

/// Delay before retry number `attempt` (1-based): 100 ms doubling up to `max`, with ±50 %
/// jitter so that many agents do not reconnect in step.
pub fn delay(attempt: usize, max: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let base = base.min(max);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let r =
        xxhash_rust::xxh3::xxh3_64(&[nanos.to_le_bytes(), (attempt as u32).to_le_bytes()].concat());
    let factor = 0.5 + (r % 1000) as f64 / 1000.0;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_stays_bounded() {
        for a in 1..40 {
            let d = delay(a, Duration::from_secs(10));
            assert!(d <= Duration::from_secs(15), "{d:?}");
            assert!(d >= Duration::from_millis(50), "{d:?}");
        }
        assert!(delay(10, Duration::from_secs(10)) >= Duration::from_secs(5));
    }
}
