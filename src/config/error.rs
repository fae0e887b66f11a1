//! The one error type of configuration loading. Every variant names the option at fault the
//! way the user wrote it (an environment variable, a dotted config-file key, a CLI word), so
//! the one-line Display printed on stderr is enough to fix the setting.

/// Why the configuration could not be loaded. The process should print it and exit non-zero:
/// corecast never falls back to a default for a value it could not understand.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A word after `corecast start` that is not `--config`.
    #[error("unknown argument {0:?} (expected --config=<file.json>)")]
    UnknownArgument(String),

    /// `--config` was given without a path.
    #[error("--config needs a path: --config=<file.json>")]
    MissingConfigPath,

    /// The config file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    ReadFile {
        /// The path given to `--config`.
        path: String,
        /// The OS error.
        reason: String,
    },

    /// Text that must be JSON is not: the config file, or a JSON-valued option such as
    /// `SOKETI_DEFAULT_APP_WEBHOOKS`.
    #[error("{option} is not valid JSON: {reason}")]
    BadJson {
        /// The file path or the option name.
        option: String,
        /// serde_json's message, with line and column.
        reason: String,
    },

    /// A config-file key corecast (and Soketi) does not know; usually a typo.
    #[error("unknown config key {key:?}")]
    UnknownKey {
        /// The dotted key, e.g. `eventLimits.maxNameLenght`.
        key: String,
    },

    /// A `SOKETI_*` or `CORECAST_*` variable that no option reads; usually a typo.
    #[error("unknown environment variable {name} (see src/config/env.rs for the supported list)")]
    UnknownEnv {
        /// The variable name.
        name: String,
    },

    /// A value of the wrong type or out of range.
    #[error("invalid value for {option}: {value} (expected {expected})")]
    Invalid {
        /// The option name: env var, dotted key, or `appManager.array.apps.0.maxConnections`.
        option: String,
        /// The value as written, quoted for strings.
        value: String,
        /// What would have been accepted.
        expected: String,
    },

    /// A Soketi option whose value selects a feature corecast does not have (e.g. the MySQL
    /// app manager). Starting anyway would silently run something else.
    #[error("{option}: {value} is not supported by corecast ({reason})")]
    Unsupported {
        /// The option name.
        option: String,
        /// The value as written.
        value: String,
        /// What corecast supports instead.
        reason: &'static str,
    },

    /// A required app field is absent.
    #[error("{option} is required")]
    Missing {
        /// The option name, e.g. `appManager.array.apps.1.secret`.
        option: String,
    },

    /// Two apps share an id or a key, so lookups would be ambiguous.
    #[error("duplicate app {field} {value:?} in appManager.array.apps")]
    DuplicateApp {
        /// `id` or `key`.
        field: &'static str,
        /// The shared value.
        value: String,
    },

    /// Two options that cannot be used together.
    #[error("{options} cannot be used together: {reason}")]
    Conflict {
        /// The options, as in `a and b`.
        options: &'static str,
        /// Why, and what to do instead.
        reason: &'static str,
    },

    /// `appManager.array.apps` is an empty list: the server would accept no connection.
    #[error("appManager.array.apps is empty: at least one app is required")]
    NoApps,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_naming_option_and_value() {
        let err = ConfigError::Invalid {
            option: "SOKETI_PORT".to_owned(),
            value: "\"http\"".to_owned(),
            expected: "an integer from 0 to 65535".to_owned(),
        };
        let text = err.to_string();
        assert_eq!(
            text,
            "invalid value for SOKETI_PORT: \"http\" (expected an integer from 0 to 65535)"
        );
        assert!(!text.contains('\n'));
    }
}
