//! placeholder
//! placeholder: the lead writes this module's docs and the bridge.

pub mod client;
pub mod resp;
