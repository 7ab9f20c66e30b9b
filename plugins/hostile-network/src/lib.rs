//! Test plugin: opens a TCP connection. Its component imports `wasi:sockets`,
//! which the host does not grant, so the upload must be refused naming it.

use serde_json::Value;
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct Dialer;

impl Plugin for Dialer {
    fn init(_config: Value) -> Result<Self, String> {
        Ok(Dialer)
    }

    fn process(&mut self, event: Event) -> Outcome {
        match std::net::TcpStream::connect("127.0.0.1:8080") {
            Ok(_) => Outcome::reject("escaped", "connected to the host network"),
            Err(_) => Outcome::keep(event),
        }
    }
}

export_plugin!(Dialer);
