//! Test plugin: panics while processing (a guest trap), optionally only for
//! events whose name is `config.only_name`.

use serde_json::Value;
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct Panicky(Option<String>);

impl Plugin for Panicky {
    fn init(config: Value) -> Result<Self, String> {
        Ok(Panicky(config["only_name"].as_str().map(str::to_string)))
    }

    fn process(&mut self, event: Event) -> Outcome {
        if self.0.as_ref().is_none_or(|name| *name == event.name) {
            panic!("hostile-panic: refusing to process {}", event.id);
        }
        Outcome::keep(event)
    }
}

export_plugin!(Panicky);
