//! Digging in the JSON the `ipivirt` binary writes (reports and traces),
//! with a message naming what is missing.

use serde_json::Value;

/// The unsigned integer at JSON pointer `path` in `v`.
pub fn uint(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is not an unsigned integer in {v}"))
}

/// The number at JSON pointer `path` in `v`.
pub fn number(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// The events of a Chrome trace file (`--trace`).
pub fn trace_events(trace: &Value) -> &[Value] {
    trace["traceEvents"]
        .as_array()
        .unwrap_or_else(|| panic!("no traceEvents array in the trace"))
}
