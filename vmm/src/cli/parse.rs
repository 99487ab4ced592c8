//! The value parsers of the command line's options, each with the
//! message that says what a bad value should have been (exit 2, from
//! clap). The closed sets (workloads, test hooks, designs) are abi's.

use std::time::Duration;

use crate::inject;

/// A parsed `--ratios` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RatioList(pub(super) Vec<crate::sweep::Ratio>);

pub(super) fn parse_ratio_list(s: &str) -> Result<RatioList, String> {
    crate::sweep::parse_ratios(s)
        .map(RatioList)
        .map_err(|e| e.to_string())
}

/// A `--window`: above 0, and in the guest's microsecond field.
pub(super) fn parse_window(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.as_micros() == 0 => Err(format!("{s}: give a window of at least 1us")),
        d if d.as_micros() > u128::from(u32::MAX) => {
            Err(format!("{s}: give a window of at most 4000s"))
        }
        d => Ok(d),
    }
}

/// A parsed vCPU list (`--initiators`, `--preempt-vcpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VcpuList(pub(super) Vec<u32>);

pub(super) fn parse_vcpus(s: &str) -> Result<VcpuList, String> {
    inject::placement::parse_cpu_list(s)
        .map(|v| VcpuList(v.into_iter().map(|c| c as u32).collect()))
        .map_err(|_| format!("'{s}' is not a vCPU list (give e.g. 0, 1-3, 0,2)"))
}

/// A parsed `--placement` map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Placement(pub(super) Vec<usize>);

pub(super) fn parse_placement(s: &str) -> Result<Placement, String> {
    inject::placement::parse_placement(s).map(Placement)
}

/// Parsed `--torture-weights`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Weights(pub(super) [u8; abi::torture::COUNT]);

pub(super) fn parse_weights(s: &str) -> Result<Weights, String> {
    let mut w = [0u8; abi::torture::COUNT];
    let mut seen = [false; abi::torture::COUNT];
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not NAME=WEIGHT"))?;
        let i = abi::torture::NAMES
            .iter()
            .position(|n| *n == name.trim())
            .ok_or_else(|| {
                format!(
                    "unknown primitive '{name}': valid are {}",
                    abi::torture::NAMES.join(", ")
                )
            })?;
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("primitive '{}' is weighted twice", name.trim()));
        }
        w[i] = value
            .trim()
            .parse()
            .map_err(|_| format!("weight of {name} must be 0..=255"))?;
    }
    if w.iter().all(|&v| v == 0) {
        return Err("give at least one primitive a weight above 0".into());
    }
    Ok(Weights(w))
}

/// A parsed `--pv` list ([`abi::pv`] bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PvList(pub(super) u32);

pub(super) fn parse_pv(s: &str) -> Result<PvList, String> {
    if s.split(',').all(|f| f.trim().is_empty()) {
        return Err("name at least one PV feature (or none)".into());
    }
    crate::pv::parse_features(s).map(PvList)
}

/// A parsed `--designs` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DesignList(pub(super) Vec<crate::scenario::DesignColumn>);

pub(super) fn parse_designs(s: &str) -> Result<DesignList, String> {
    crate::scenario::parse_columns(s).map(DesignList)
}

pub(super) fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a probability between 0 and 1")),
    }
}

/// A parsed `--host-cpus` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CpuList(pub(super) Vec<usize>);

pub(super) fn parse_cpus(s: &str) -> Result<CpuList, String> {
    inject::placement::parse_cpu_list(s)
        .map(CpuList)
        .map_err(|e| e.to_string())
}

/// Parses `200us`, `2ms`, `1.5s`, or a bare number of seconds (`0`, `2`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (give e.g. 200us, 2ms, 2s)"))?;
    let secs = v * scale;
    if secs.is_finite() && (0.0..=86_400.0).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("{s} is out of range: give 0 to 86400 s"))
    }
}

/// A clap parser for one of abi's closed sets: the names, their order and
/// their parsing are abi's (`wire_enum!`), not a second list here.
pub(super) fn wire_parser<T: abi::WireEnum + Send + Sync>(
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(T::names().iter().copied())
        .map(|s| s.parse::<T>().expect("a name abi lists parses"))
}

/// A duration above zero (0 would silently mean the default).
pub(super) fn parse_period(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!(
            "{s}: give a period above 0 (leave the option out for the default)"
        )),
        d => Ok(d),
    }
}

/// A duration like every other (`10s`, `500ms`, a bare number of
/// seconds), above zero.
pub(super) fn parse_timeout(s: &str) -> Result<f64, String> {
    match parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d.as_secs_f64()),
        Ok(_) => Err(format!("{s} is out of range: give a timeout above 0")),
        Err(e) => Err(e),
    }
}
