//! Hostile input against the alarm engine and the local alarm publisher.

#[allow(unused_imports)]
use super::*;
