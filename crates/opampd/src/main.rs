//! placeholder: the server helper writes this
fn main() {}
