//! Plugins that ship inside the binary (built from `plugins/` by
//! `build.rs`), installed by default where an API family promises their
//! behaviour.

/// `customer-prefix`: the session-audit document promises that customer
/// created events are prefixed `customer.`.
pub const CUSTOMER_PREFIX: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/customer_prefix.wasm"));
