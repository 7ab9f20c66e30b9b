//! Test plugin: allocates 1 MiB blocks until the host refuses to grow its
//! memory.

use serde_json::Value;
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct Hog(Vec<Vec<u8>>);

impl Plugin for Hog {
    fn init(_config: Value) -> Result<Self, String> {
        Ok(Hog(Vec::new()))
    }

    fn process(&mut self, event: Event) -> Outcome {
        loop {
            self.0.push(std::hint::black_box(vec![7u8; 1 << 20]));
            if self.0.len() == usize::MAX {
                return Outcome::keep(event);
            }
        }
    }
}

export_plugin!(Hog);
