//! The generated host-side bindings of the plugin contract: `herald:plugin@0.2.0` (`wit/plugin.wit`),
//! whose types the rest of the host uses, and the frozen `herald:plugin@0.1.0` (`wit/v0.1/`), whose
//! plugins keep loading. 0.1's types are bound to 0.2's (the definitions are the same), so a hook's
//! request and verdict are one Rust type whichever version the plugin targets.
//!
//! Nothing else runs `bindgen!`. Exports are called asynchronously (so an epoch deadline can interrupt a
//! guest without blocking a runtime thread); the host imports are plain synchronous functions but for
//! `http.fetch` and `cluster-state`, which await the backend or the engine with the instance suspended.
// The generated code documents itself in the WIT files, and its visibility is bindgen's.
#![allow(missing_docs, unreachable_pub)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "herald:plugin/plugin@0.2.0",
    // A request to the backend suspends the instance's fiber instead of blocking a thread.
    // So does a call to the engine for cluster-wide state.
    imports: {
        "herald:plugin/http.fetch": async,
        "herald:plugin/cluster-state.get": async,
        "herald:plugin/cluster-state.set": async,
        "herald:plugin/cluster-state.incr": async,
        "herald:plugin/cluster-state.delete": async,
    },
    exports: { default: async },
    additional_derives: [PartialEq, Eq],
});

pub use self::herald::plugin::host::Level;
pub use self::herald::plugin::types::*;

/// `herald:plugin@0.1.0`: logging and the clock, the same hooks.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1",
        world: "herald:plugin/plugin@0.1.0",
        exports: { default: async },
        with: {
            "herald:plugin/types@0.1.0": super::herald::plugin::types,
        },
    });
}
