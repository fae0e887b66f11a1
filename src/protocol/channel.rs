//! Channel names: the character set and length Pusher allows, and the kind a prefix selects.

/// What a channel's name prefix makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    PrivateEncrypted,
    Presence,
}

impl ChannelKind {
    /// The kind of `name`, from its prefix (`cache-` variants share their base kind).
    #[must_use]
    pub fn of(name: &str) -> Self {
        if name.starts_with("private-encrypted-") {
            Self::PrivateEncrypted
        } else if name.starts_with("private-") {
            Self::Private
        } else if name.starts_with("presence-") {
            Self::Presence
        } else {
            Self::Public
        }
    }

    /// Whether subscribing needs a signature.
    #[must_use]
    pub const fn needs_auth(self) -> bool {
        !matches!(self, Self::Public)
    }
}

/// Prefix of the channel a signed-in user's socket listens on for `sendToUser` events.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// Whether `name` is a cache channel, whose last event is replayed to new subscribers.
#[must_use]
pub fn is_cache_channel(name: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// Empty names name nothing.
    #[error("The channel name is empty.")]
    Empty,
    /// Longer than the app's `max_channel_name_length`.
    #[error("The channel name is longer than the allowed {0} characters.")]
    TooLong(usize),
    /// Outside `[A-Za-z0-9_\-=@,.;]`.
    #[error("The channel name contains characters outside [A-Za-z0-9_-=@,.;].")]
    InvalidCharacter,
}

/// Checks a channel named in a REST publish: Pusher's rules, or a user channel
/// `#server-to-user-{id}` (what the libraries' `sendToUser` targets).
pub fn validate_publish_channel(name: &str, max_len: usize) -> Result<(), ChannelNameError> {
    match name.strip_prefix(USER_CHANNEL_PREFIX) {
        Some(user) if !user.is_empty() && name.len() <= max_len => Ok(()),
        Some(_) => Err(ChannelNameError::InvalidCharacter),
        None => validate_channel_name(name, max_len),
    }
}

/// Checks `name` against Pusher's rules: 1 to `max_len` characters of `[A-Za-z0-9_\-=@,.;]`.
/// `#server-to-user-{id}` is reserved for the server and so is refused here.
pub fn validate_channel_name(name: &str, max_len: usize) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > max_len {
        return Err(ChannelNameError::TooLong(max_len));
    }
    let allowed = |b: u8| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
    };
    if name.bytes().all(allowed) {
        Ok(())
    } else {
        Err(ChannelNameError::InvalidCharacter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_select_channel_kinds() {
        assert_eq!(ChannelKind::of("chat"), ChannelKind::Public);
        assert_eq!(ChannelKind::of("private-chat"), ChannelKind::Private);
        assert_eq!(
            ChannelKind::of("private-encrypted-x"),
            ChannelKind::PrivateEncrypted
        );
        assert_eq!(ChannelKind::of("presence-room"), ChannelKind::Presence);
        assert!(!ChannelKind::of("cache-x").needs_auth());
    }

    #[test]
    fn cache_and_user_channels_are_recognised() {
        assert!(is_cache_channel("cache-x") && is_cache_channel("presence-cache-x"));
        assert!(is_cache_channel("private-encrypted-cache-x") && !is_cache_channel("x-cache-"));
        assert_eq!(validate_publish_channel("#server-to-user-42", 200), Ok(()));
        assert!(validate_publish_channel("#server-to-user-", 200).is_err());
        assert!(validate_publish_channel("#other", 200).is_err());
    }

    #[test]
    fn channel_names_follow_pusher_character_set_and_length() {
        assert_eq!(validate_channel_name("a-b_c=d@e,f.g;h", 200), Ok(()));
        assert_eq!(validate_channel_name("", 200), Err(ChannelNameError::Empty));
        assert_eq!(
            validate_channel_name("has space", 200),
            Err(ChannelNameError::InvalidCharacter)
        );
        assert_eq!(
            validate_channel_name("#server-to-user-1", 200),
            Err(ChannelNameError::InvalidCharacter)
        );
        assert_eq!(
            validate_channel_name(&"x".repeat(201), 200),
            Err(ChannelNameError::TooLong(200))
        );
        assert_eq!(validate_channel_name(&"x".repeat(200), 200), Ok(()));
    }
}
