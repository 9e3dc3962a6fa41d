//! Hostile input against storage: blocks, dead letters, eviction accounting.

#[allow(unused_imports)]
use super::*;
