//! The `LOKY_MAX_CPU_COUNT` environment variable: a user's cap on the count.

use super::explain::{CpuLimit, LimitKind, LimitValue};

/// Name of the environment variable that caps [`cpu_count`](super::cpu_count)
/// and [`cpu_count_physical`](super::cpu_count_physical). Its value must be a
/// positive integer; anything else is ignored with a warning.
pub const MAX_CPU_COUNT_ENV: &str = "LOKY_MAX_CPU_COUNT";

/// The variable's value in this process; a non-UTF-8 value is kept lossily
/// (and then rejected as not a number).
pub(crate) fn live() -> Option<String> {
    std::env::var_os(MAX_CPU_COUNT_ENV).map(|v| v.to_string_lossy().into_owned())
}

/// The limit set by a value of the variable (`None`: not set).
pub(crate) fn limit(value: Option<&str>, source: String) -> CpuLimit {
    let Some(text) = value else {
        return CpuLimit::new(LimitKind::Env, source, None, LimitValue::Unlimited);
    };
    let value = match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => LimitValue::Cpus(n),
        _ => {
            tracing::warn!(
                value = text,
                "{MAX_CPU_COUNT_ENV} must be a positive integer; ignored"
            );
            LimitValue::Unavailable("not a positive integer".to_owned())
        }
    };
    CpuLimit::new(LimitKind::Env, source, Some(text), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: Option<&str>) -> LimitValue {
        limit(text, String::new()).value
    }

    #[test]
    fn parses() {
        assert_eq!(value(None), LimitValue::Unlimited);
        assert_eq!(value(Some("4")), LimitValue::Cpus(4));
        assert_eq!(value(Some(" 2\n")), LimitValue::Cpus(2));
        for bad in ["0", "-1", "", "two", "1.5", "99999999999999999999999"] {
            assert!(
                matches!(value(Some(bad)), LimitValue::Unavailable(_)),
                "{bad:?}"
            );
        }
    }
}
