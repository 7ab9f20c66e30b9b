//! Test plugin: never returns from `init`.

use serde_json::Value;
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct Slow;

impl Plugin for Slow {
    fn init(_config: Value) -> Result<Self, String> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
            if n == u64::MAX {
                return Ok(Slow);
            }
        }
    }

    fn process(&mut self, event: Event) -> Outcome {
        Outcome::keep(event)
    }
}

export_plugin!(Slow);
