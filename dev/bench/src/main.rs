//! Benchmark command (stub; see README "Benchmarks").
fn main() {}
