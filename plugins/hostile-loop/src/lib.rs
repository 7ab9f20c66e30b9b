//! Test plugin: spins forever in `process`. The host must stop it at its
//! deadline (epoch interruption) or fuel budget.

use serde_json::Value;
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct Spin;

impl Plugin for Spin {
    fn init(_config: Value) -> Result<Self, String> {
        Ok(Spin)
    }

    fn process(&mut self, event: Event) -> Outcome {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
            if n == u64::MAX {
                return Outcome::keep(event);
            }
        }
    }
}

export_plugin!(Spin);
