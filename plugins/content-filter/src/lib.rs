//! Herald example plugin: content-filter (being written).
