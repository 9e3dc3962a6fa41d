//! Hostile conditions on the disk: a full filesystem under the buffer.

#[allow(unused_imports)]
use super::*;
