//! Host bindings generated from the WIT contract. Every other module imports
//! the generated types from here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

pub use exports::sluice::plugin::handler;
pub use sluice::plugin::types;
