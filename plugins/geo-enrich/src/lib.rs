//! Add location fields to events from a lookup table in the config.
//!
//! Config: `{"from": "ip_address", "into": "geo", "table": [{"cidr":
//! "81.2.69.0/24", "country": "GB", "city": "London"}, ...]}`. `from` (default
//! `ip_address`) names the attribute or `event_payload.` path holding an IP
//! address; the longest matching CIDR wins and its other keys are written to
//! the payload under `into` (default `geo`). Events without a match pass
//! unchanged.

use std::net::IpAddr;

use serde_json::{Map, Value};
use sluice_sdk::{export_plugin, Event, Outcome, Plugin};

struct Entry {
    network: IpAddr,
    bits: u32,
    fields: Map<String, Value>,
}

struct GeoEnrich {
    from: String,
    into: String,
    table: Vec<Entry>,
}

fn mask(addr: IpAddr, bits: u32) -> Option<u128> {
    let (value, width) = match addr {
        IpAddr::V4(a) => (u32::from(a) as u128, 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    (bits <= width).then(|| if bits == 0 { 0 } else { value >> (width - bits) })
}

fn parse_entry(i: usize, entry: &Value) -> Result<Entry, String> {
    let mut fields = entry.as_object().cloned().ok_or_else(|| format!("config.table[{i}] must be an object"))?;
    let cidr = fields.remove("cidr").and_then(|c| c.as_str().map(str::to_string));
    let cidr = cidr.ok_or_else(|| format!("config.table[{i}].cidr must be a string like 10.0.0.0/8"))?;
    let bad = || format!("config.table[{i}].cidr: {cidr} is not a CIDR block");
    let (addr, bits) = cidr.split_once('/').ok_or_else(bad)?;
    let network: IpAddr = addr.parse().map_err(|_| bad())?;
    let bits: u32 = bits.parse().map_err(|_| bad())?;
    mask(network, bits).ok_or_else(bad)?;
    Ok(Entry { network, bits, fields })
}

impl Plugin for GeoEnrich {
    fn init(config: Value) -> Result<Self, String> {
        let text = |key: &str, default: &str| match config.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("config.{key} must be a string")),
        };
        let table = config["table"].as_array().ok_or("config.table must be a list")?;
        let mut table: Vec<Entry> =
            table.iter().enumerate().map(|(i, e)| parse_entry(i, e)).collect::<Result<_, _>>()?;
        table.sort_by(|a, b| b.bits.cmp(&a.bits));
        Ok(GeoEnrich { from: text("from", "ip_address")?, into: text("into", "geo")?, table })
    }

    fn process(&mut self, mut event: Event) -> Outcome {
        let Some(addr) = event.field(&self.from).and_then(|v| v.as_str()?.parse::<IpAddr>().ok()) else {
            return Outcome::keep(event);
        };
        let found = self
            .table
            .iter()
            .find(|e| e.network.is_ipv4() == addr.is_ipv4() && mask(e.network, e.bits) == mask(addr, e.bits));
        if let Some(entry) = found {
            if let Value::Object(payload) = event.payload_mut() {
                payload.insert(self.into.clone(), Value::Object(entry.fields.clone()));
            }
        }
        Outcome::keep(event)
    }
}

export_plugin!(GeoEnrich);
