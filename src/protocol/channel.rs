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
