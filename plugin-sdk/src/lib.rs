//! The Herald plugin SDK.
//!
//! Plugins are WebAssembly components that Herald loads from a watched folder. The contract (`wit/`), the
//! bindings and the plugin trait arrive with the plugin platform; this crate reserves the name and place.
