//! Per-tenant ingest rates: a token bucket of events per tenant (its live
//! and test spaces together), refilled at its sustained rate up to its
//! burst. A request is admitted when the bucket holds its input events (or
//! is full, for a request larger than the burst); what its plugins add by
//! fan-out is charged after the run, as debt the next requests wait out. So
//! the rate bounds what a tenant stores, not only what it sends.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A tenant's rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        self.at = now;
    }
}

pub(super) struct Rates {
    default: Rate,
    overrides: parking_lot::Mutex<HashMap<String, Rate>>,
    buckets: parking_lot::Mutex<HashMap<String, Bucket>>,
}

fn owner(tenant: &str) -> &str {
    tenant.split(':').next().unwrap_or(tenant)
}

impl Rates {
    pub fn new(default: Rate) -> Rates {
        Rates { default, overrides: Default::default(), buckets: Default::default() }
    }

    /// The rate of tenants without their own.
    pub fn default(&self) -> Rate {
        self.default
    }

    /// Set (or, with `None`, reset to the default) a tenant's rate.
    pub fn set(&self, tenant: &str, rate: Option<Rate>) {
        let tenant = owner(tenant).to_string();
        match rate {
            Some(rate) => self.overrides.lock().insert(tenant.clone(), rate),
            None => self.overrides.lock().remove(&tenant),
        };
        if let Some(bucket) = self.buckets.lock().get_mut(&tenant) {
            bucket.rate = rate.unwrap_or(self.default);
            bucket.tokens = bucket.tokens.min(bucket.rate.burst);
        }
    }

    /// The rate a tenant is held to.
    pub fn of(&self, tenant: &str) -> Rate {
        self.overrides.lock().get(owner(tenant)).copied().unwrap_or(self.default)
    }

    /// Run `f` on the tenant's bucket, created full and refilled to now.
    fn with_bucket<T>(&self, tenant: &str, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let rate = self.of(tenant);
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket =
            buckets.entry(owner(tenant).to_string()).or_insert_with(|| Bucket { rate, tokens: rate.burst, at: now });
        bucket.rate = rate;
        bucket.refill(now);
        f(bucket)
    }

    /// Admit `events` of `tenant` (0: admitted unless in debt), or say how
    /// long to wait.
    pub fn admit(&self, tenant: &str, events: usize) -> Result<(), Duration> {
        self.with_bucket(tenant, |bucket| {
            let needed = (events as f64).min(bucket.rate.burst);
            if bucket.tokens >= needed {
                bucket.tokens -= events as f64;
                return Ok(());
            }
            let wait = (needed - bucket.tokens) / bucket.rate.per_second.max(f64::MIN_POSITIVE);
            Err(Duration::from_secs_f64(wait.min(3600.0)))
        })
    }

    /// Give back `amount` taken by an admission that was then refused
    /// elsewhere (up to the burst).
    pub fn refund(&self, tenant: &str, amount: usize) {
        self.with_bucket(tenant, |bucket| bucket.tokens = (bucket.tokens + amount as f64).min(bucket.rate.burst));
    }

    /// Charge `amount` more to `tenant` (its plugins' fan-out, or the
    /// plugin time a run took), as debt.
    pub fn charge(&self, tenant: &str, amount: usize) {
        self.with_bucket(tenant, |bucket| bucket.tokens -= amount as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let rates = Rates::new(Rate { per_second: 100.0, burst: 10.0 });
        assert!(rates.admit("t", 10).is_ok());
        let wait = rates.admit("t", 5).unwrap_err();
        assert!(wait > Duration::from_millis(30) && wait <= Duration::from_millis(60), "{wait:?}");
        // Another tenant has its own bucket; a test space shares its tenant's.
        assert!(rates.admit("u", 10).is_ok());
        assert!(rates.admit("t:test", 1).is_err());
        // Fan-out is debt.
        rates.charge("u", 100);
        assert!(rates.admit("u", 1).unwrap_err() > Duration::from_millis(900));
        // A request larger than the burst passes on a full bucket only.
        rates.set("v", Some(Rate { per_second: 1.0, burst: 5.0 }));
        assert!(rates.admit("v", 50).is_ok());
        assert!(rates.admit("v", 1).is_err());
    }
}
