//! Pusher error codes, in the one place that maps a failure to the number a client sees.
//!
//! The ranges tell pusher-js what to do: 4000-4099 do not reconnect, 4100-4199 reconnect
//! after a back-off, 4200-4299 reconnect at once, 4300-4399 are errors that keep the
//! connection open.

/// A documented Pusher error code, sent in `pusher:error` and as the WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The key in `/app/{key}` matches no app.
    AppDoesNotExist = 4001,
    /// The app exists but is disabled.
    AppDisabled = 4003,
    /// The app is over its connection quota.
    OverConnectionQuota = 4004,
    /// The path is not `/app/{key}`.
    PathNotFound = 4005,
    /// The `protocol` query parameter is not a number.
    InvalidVersionFormat = 4006,
    /// The `protocol` query parameter is missing or below 7.
    UnsupportedProtocolVersion = 4007,
    /// The connection is not authorised (bad sign-in, terminated user, invalid channel).
    Unauthorized = 4009,
    /// The server cannot keep up with this connection (slow reader).
    OverCapacity = 4100,
    /// Whether the app exists cannot be told now (the app manager's database does not
    /// answer): reconnect after a back-off.
    AppsUnavailable = 4101,
    /// Generic "reconnect now" (shutdown).
    ReconnectImmediately = 4200,
    /// A server ping got no pong in time.
    PongNotReceived = 4201,
    /// Closed after inactivity.
    ClosedAfterInactivity = 4202,
    /// A client event was refused (rate, size, name, channel type); the connection stays open.
    ClientEventRejected = 4301,
}

impl ErrorCode {
    /// The number on the wire.
    #[must_use]
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The message sent with the code.
    #[must_use]
    pub const fn message(self) -> &'static str {
        match self {
            Self::AppDoesNotExist => "App key does not exist.",
            Self::AppDisabled => "The app is disabled.",
            Self::OverConnectionQuota => "The app has reached its connection quota.",
            Self::PathNotFound => "Path not found.",
            Self::InvalidVersionFormat => "Invalid version string format.",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version.",
            Self::Unauthorized => "The connection is unauthorized.",
            Self::OverCapacity => "Over capacity: the connection could not keep up.",
            Self::AppsUnavailable => "Apps cannot be looked up right now; reconnect later.",
            Self::ReconnectImmediately => "Server closed the connection, reconnect.",
            Self::PongNotReceived => "Pong reply not received.",
            Self::ClosedAfterInactivity => "Closed after inactivity.",
            Self::ClientEventRejected => "Client event rejected.",
        }
    }

    /// Whether the server closes the connection after sending this error.
    #[must_use]
    pub const fn closes(self) -> bool {
        !matches!(self, Self::ClientEventRejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fall_in_pusher_reconnect_ranges() {
        assert_eq!(ErrorCode::AppDoesNotExist.code(), 4001);
        assert_eq!(ErrorCode::UnsupportedProtocolVersion.code(), 4007);
        assert_eq!(ErrorCode::OverCapacity.code(), 4100);
        assert_eq!(ErrorCode::PongNotReceived.code(), 4201);
        assert!(!ErrorCode::ClientEventRejected.closes());
        assert!(ErrorCode::Unauthorized.closes());
    }
}
