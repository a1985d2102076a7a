//! Herald example plugin: router (being written).
