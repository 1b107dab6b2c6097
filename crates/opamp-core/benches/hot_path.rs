//! placeholder replaced by the core helper
fn main() {}
