//! Host bindings generated from the WIT contract. Every other module imports
//! the generated types from here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

pub use self::exports::sluice::plugin::handler;
pub use self::sluice::plugin::types;
