//! Test plugin: recurses without end until the host's stack limit stops it.

use serde_json::Value;
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct Deep;

#[inline(never)]
fn descend(depth: u64, pad: [u64; 16]) -> u64 {
    let pad = std::hint::black_box(pad);
    if depth == u64::MAX {
        return pad[0];
    }
    descend(depth + 1, pad).wrapping_add(pad[(depth % 16) as usize])
}

impl Plugin for Deep {
    fn init(_config: Value) -> Result<Self, String> {
        Ok(Deep)
    }

    fn process(&mut self, _event: Event) -> Outcome {
        let depth = descend(0, [1; 16]);
        Outcome::drop(format!("reached depth {depth}"))
    }
}

export_plugin!(Deep);
