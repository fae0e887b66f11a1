//! Pusher protocol 7, sans-IO: identifiers, channel names, error codes, the messages a
//! client sends and the frames the server sends. Nothing here touches a socket or a clock.

mod channel;
mod codes;
mod ids;
mod inbound;
mod outbound;

pub use channel::{
    ChannelKind, ChannelNameError, USER_CHANNEL_PREFIX, is_cache_channel, validate_channel_name,
    validate_publish_channel,
};
pub use codes::ErrorCode;
pub use ids::{SocketId, SocketIdError};
pub use inbound::{ClientMessage, InboundError, parse_client_message};
pub use outbound::{
    Data, EventFrame, cache_miss_frame, connection_established, error_frame, event_frame,
    member_added_frame, member_removed_frame, ping_frame, pong_frame, subscription_error_frame,
    subscription_succeeded,
};

/// The only protocol version corecast speaks (pusher-js 8 and Laravel Echo send 7).
pub const PROTOCOL_VERSION: u32 = 7;
