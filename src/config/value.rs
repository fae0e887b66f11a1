//! A raw option value and its typed readers. A value comes either from the environment (text)
//! or from the config file (JSON); both go through the same readers so `SOKETI_PORT=6002` and
//! `"port": 6002` mean the same, and every failure names the option it came from.
//!
//! JSON strings are read like environment text ("6002", "true"), because Soketi's own app
//! records (and its env handling, which JSON-parses every variable) mix the two freely.

use std::time::Duration;

use serde_json::Value;

use super::ConfigError;

/// One value as written, before it is given a type.
#[derive(Debug, Clone)]
pub(crate) enum Raw {
    /// Text of an environment variable.
    Env(String),
    /// A value from the config file.
    Json(Value),
}

impl Raw {
    /// Whether the value means "not set" (JSON `null`, or an empty string), which Soketi treats
    /// as "keep the default" for app fields.
    pub(crate) fn is_unset(&self) -> bool {
        match self {
            Raw::Env(text) => text.is_empty(),
            Raw::Json(Value::Null) => true,
            Raw::Json(Value::String(text)) => text.is_empty(),
            Raw::Json(_) => false,
        }
    }

    /// The text to parse a scalar from, or `None` for arrays and objects.
    fn text(&self) -> Option<String> {
        match self {
            Raw::Env(text) | Raw::Json(Value::String(text)) => Some(text.trim().to_owned()),
            Raw::Json(Value::Bool(b)) => Some(b.to_string()),
            Raw::Json(Value::Number(n)) => Some(n.to_string()),
            Raw::Json(_) => None,
        }
    }

    /// The value as the user wrote it, for error messages (long values are cut).
    pub(crate) fn shown(&self) -> String {
        let mut text = match self {
            Raw::Env(text) => format!("{text:?}"),
            Raw::Json(value) => value.to_string(),
        };
        if text.len() > 80 {
            let cut = (0..=77)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push_str("...");
        }
        text
    }

    pub(crate) fn invalid(&self, option: &str, expected: &str) -> ConfigError {
        ConfigError::Invalid {
            option: option.to_owned(),
            value: self.shown(),
            expected: expected.to_owned(),
        }
    }
}

/// `true`/`false` (any case) or `1`/`0`.
pub(crate) fn boolean(raw: &Raw, option: &str) -> Result<bool, ConfigError> {
    match raw.text().map(|t| t.to_ascii_lowercase()).as_deref() {
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        _ => Err(raw.invalid(option, "true, false, 1 or 0")),
    }
}

/// `on`/`off` (any case), or what [`boolean`] reads.
pub(crate) fn on_off(raw: &Raw, option: &str) -> Result<bool, ConfigError> {
    match raw.text().map(|t| t.to_ascii_lowercase()).as_deref() {
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        _ => boolean(raw, option).map_err(|_| raw.invalid(option, "on or off")),
    }
}

/// A whole number in `min..=max`.
pub(crate) fn integer(raw: &Raw, option: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let expected = if max == u64::MAX {
        format!("an integer of at least {min}")
    } else {
        format!("an integer from {min} to {max}")
    };
    raw.text()
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| raw.invalid(option, &expected))
}

/// A whole number that fits `usize`, at least `min`.
pub(crate) fn size(raw: &Raw, option: &str, min: usize) -> Result<usize, ConfigError> {
    let n = integer(raw, option, min as u64, usize::MAX as u64)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// A TCP port.
pub(crate) fn port(raw: &Raw, option: &str) -> Result<u16, ConfigError> {
    let n = integer(raw, option, 0, u64::from(u16::MAX))?;
    Ok(u16::try_from(n).unwrap_or(u16::MAX))
}

/// A Soketi limit: `-1` means unlimited (`None`), otherwise a non-negative integer.
pub(crate) fn limit(raw: &Raw, option: &str) -> Result<Option<u64>, ConfigError> {
    match raw.text().as_deref() {
        Some("-1") => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| raw.invalid(option, "a non-negative integer, or -1 for unlimited")),
        None => Err(raw.invalid(option, "a non-negative integer, or -1 for unlimited")),
    }
}

/// A finite number greater than or equal to `min` (sizes in KB or MB may be fractional).
pub(crate) fn float(raw: &Raw, option: &str, min: f64) -> Result<f64, ConfigError> {
    raw.text()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|n| n.is_finite() && *n >= min)
        .ok_or_else(|| raw.invalid(option, &format!("a number of at least {min}")))
}

/// A duration written in milliseconds, as Soketi's timeouts are.
pub(crate) fn millis(raw: &Raw, option: &str) -> Result<Duration, ConfigError> {
    integer(raw, option, 0, u64::MAX).map(Duration::from_millis)
}

/// A duration written in whole seconds, at least `min_secs`.
pub(crate) fn seconds(raw: &Raw, option: &str, min_secs: u64) -> Result<Duration, ConfigError> {
    integer(raw, option, min_secs, u64::MAX).map(Duration::from_secs)
}

/// Any string; JSON numbers are accepted as their text (a numeric Redis password, say).
pub(crate) fn string(raw: &Raw, option: &str) -> Result<String, ConfigError> {
    match raw {
        Raw::Env(text) | Raw::Json(Value::String(text)) => Ok(text.clone()),
        Raw::Json(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(raw.invalid(option, "a string")),
    }
}

/// A string that must not be empty (ids, keys, secrets, host names).
pub(crate) fn non_empty(raw: &Raw, option: &str) -> Result<String, ConfigError> {
    let text = string(raw, option)?;
    if text.is_empty() {
        return Err(raw.invalid(option, "a non-empty string"));
    }
    Ok(text)
}

/// A string, or `None` when unset (`null` or empty), for optional credentials. The env text
/// `null` is unset too: Soketi JSON-parses every variable, so `SOKETI_DB_REDIS_PASSWORD=null`
/// means no password there.
pub(crate) fn optional_string(raw: &Raw, option: &str) -> Result<Option<String>, ConfigError> {
    if raw.is_unset() || matches!(raw, Raw::Env(text) if text == "null") {
        return Ok(None);
    }
    string(raw, option).map(Some)
}

/// A JSON value: environment text and JSON strings are parsed as JSON documents, so
/// `SOKETI_DEFAULT_APP_WEBHOOKS='[...]'` and `"webhooks": "[...]"` both work, as in Soketi.
pub(crate) fn json(raw: &Raw, option: &str) -> Result<Value, ConfigError> {
    match raw {
        Raw::Env(text) | Raw::Json(Value::String(text)) => {
            serde_json::from_str(text).map_err(|e| ConfigError::BadJson {
                option: option.to_owned(),
                reason: e.to_string(),
            })
        }
        Raw::Json(value) => Ok(value.clone()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn env(text: &str) -> Raw {
        Raw::Env(text.to_owned())
    }

    #[test]
    fn booleans_accept_true_false_one_zero_from_env_and_json() {
        for (raw, want) in [
            (env("true"), true),
            (env("TRUE"), true),
            (env("1"), true),
            (env("false"), false),
            (env(" 0 "), false),
            (Raw::Json(json!(true)), true),
            (Raw::Json(json!(0)), false),
            (Raw::Json(json!("false")), false),
        ] {
            assert_eq!(boolean(&raw, "X").ok(), Some(want), "{raw:?}");
        }
        let err = boolean(&env("yes"), "SOKETI_DEBUG")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid value for SOKETI_DEBUG: \"yes\" (expected true, false, 1 or 0)"
        );
        assert!(boolean(&Raw::Json(json!([])), "debug").is_err());
    }

    #[test]
    fn integers_reject_text_negatives_fractions_and_out_of_range() {
        assert_eq!(port(&env("6001"), "SOKETI_PORT").ok(), Some(6001));
        assert_eq!(port(&Raw::Json(json!(6001)), "port").ok(), Some(6001));
        for bad in ["http", "-1", "1.5", "65536", ""] {
            let err = port(&env(bad), "SOKETI_PORT").unwrap_err().to_string();
            assert!(
                err.contains("SOKETI_PORT") && err.contains(&format!("{bad:?}")),
                "{err}"
            );
        }
        assert!(size(&env("0"), "CORECAST_SHARDS", 1).is_err());
        assert_eq!(size(&env("3"), "CORECAST_SHARDS", 1).ok(), Some(3));
    }

    #[test]
    fn limits_map_minus_one_to_unlimited_and_reject_other_negatives() {
        assert_eq!(limit(&env("-1"), "L").ok(), Some(None));
        assert_eq!(limit(&Raw::Json(json!(-1)), "L").ok(), Some(None));
        assert_eq!(limit(&env("0"), "L").ok(), Some(Some(0)));
        assert_eq!(limit(&Raw::Json(json!("250")), "L").ok(), Some(Some(250)));
        assert!(limit(&env("-2"), "L").is_err());
        assert!(limit(&env("many"), "L").is_err());
    }

    #[test]
    fn floats_accept_fractions_and_reject_negative_or_nan() {
        assert_eq!(float(&env("2.5"), "F", 0.0).ok(), Some(2.5));
        assert_eq!(float(&Raw::Json(json!(10)), "F", 0.0).ok(), Some(10.0));
        assert!(float(&env("-1"), "F", 0.0).is_err());
        assert!(float(&env("NaN"), "F", 0.0).is_err());
        assert!(float(&env("inf"), "F", 0.0).is_err());
    }

    #[test]
    fn durations_read_millis_and_seconds() {
        assert_eq!(millis(&env("3000"), "M").ok(), Some(Duration::from_secs(3)));
        assert_eq!(
            seconds(&env("120"), "S", 1).ok(),
            Some(Duration::from_secs(120))
        );
        assert!(seconds(&env("0"), "S", 1).is_err());
    }

    #[test]
    fn strings_take_numbers_but_not_structures() {
        assert_eq!(
            string(&Raw::Json(json!(123456)), "P").ok().as_deref(),
            Some("123456")
        );
        assert!(string(&Raw::Json(json!({"a": 1})), "P").is_err());
        assert!(non_empty(&env(""), "SOKETI_DEFAULT_APP_KEY").is_err());
        assert_eq!(
            optional_string(&Raw::Json(Value::Null), "P").ok(),
            Some(None)
        );
        assert_eq!(optional_string(&env("null"), "P").ok(), Some(None));
    }

    #[test]
    fn json_parses_text_and_names_the_option_on_error() {
        assert_eq!(json(&env("[]"), "W").ok(), Some(json!([])));
        assert_eq!(json(&Raw::Json(json!("[1]")), "W").ok(), Some(json!([1])));
        let err = json(&env("[{"), "SOKETI_DEFAULT_APP_WEBHOOKS")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("SOKETI_DEFAULT_APP_WEBHOOKS is not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn shown_values_are_quoted_and_cut() {
        assert_eq!(env("abc").shown(), "\"abc\"");
        let long = Raw::Env("é".repeat(100));
        assert!(long.shown().ends_with("...") && long.shown().len() <= 80);
    }
}
