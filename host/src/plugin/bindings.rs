//! The generated host-side bindings of the plugin contract (`wit/plugin.wit`, `herald:plugin@0.1.0`).
//!
//! Nothing else runs `bindgen!`; the rest of the host uses these types. Exports are called asynchronously
//! (so an epoch deadline can interrupt a guest without blocking a runtime thread); the host imports are
//! plain synchronous functions.
// The generated code documents itself in `wit/plugin.wit`, and its visibility is bindgen's.
#![allow(missing_docs, unreachable_pub)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "herald:plugin/plugin@0.1.0",
    exports: { default: async },
    additional_derives: [PartialEq, Eq],
});

pub use self::herald::plugin::host::Level;
pub use self::herald::plugin::types::*;
