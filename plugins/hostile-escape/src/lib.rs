//! Test plugin: tries to reach the host's files, environment and clocks, and
//! writes what it saw into the payload under `escape`, so a test can check that
//! every door was shut.

use serde_json::{json, Value};
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct Escape;

impl Plugin for Escape {
    fn init(_config: Value) -> Result<Self, String> {
        Ok(Escape)
    }

    fn process(&mut self, mut event: Event) -> Outcome {
        let file = match std::fs::read_to_string("/etc/passwd") {
            Ok(text) => format!("read {} bytes", text.len()),
            Err(e) => format!("denied: {e}"),
        };
        let dir = match std::fs::read_dir("/") {
            Ok(entries) => format!("listed {} entries", entries.count()),
            Err(e) => format!("denied: {e}"),
        };
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let start = std::time::Instant::now();
        let mut spin: u64 = 0;
        for i in 0..1_000_000u64 {
            spin = std::hint::black_box(spin.wrapping_add(i));
        }
        let elapsed_ns = start.elapsed().as_nanos() as u64;
        let report = json!({
            "file": file,
            "dir": dir,
            "env": std::env::vars().count(),
            "args": std::env::args().count(),
            "cwd": std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
            "wall_clock_secs": wall,
            "monotonic_elapsed_ns": elapsed_ns,
            "spin": spin,
        });
        if let Value::Object(payload) = event.payload_mut() {
            payload.insert("escape".into(), report);
        }
        Outcome::keep(event)
    }
}

export_plugin!(Escape);
