//! Live pushes over WebSocket (SPEC §3): each gaveur's channel `/ws/gaveur/{id}` and the
//! dashboards' `/ws/realtime/`.
//!
//! The [`Hub`] receives every accepted record right after validation (before it is durable:
//! live views must not wait for the disk) and turns it into frames. A frame is serialised
//! once and shared by every receiver. Each gaveur channel numbers its frames (`seq`) and keeps
//! the last few hundred for clients that reconnect with `?since=N`. Every client has a small
//! bounded queue; a client that cannot keep up is closed with 1013 instead of slowing the
//! publisher or anyone else.

mod filters;
mod gaveur_socket;
mod hub;
mod pump;
mod realtime;

pub use filters::{RealtimeFilters, RealtimeScope};
pub use gaveur_socket::serve_gaveur_channel;
pub use hub::{Frame, GaveurSubscription, Hub, HubOptions};
pub use pump::{CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED, ClientReply, OnText};
pub use realtime::serve_realtime;

/// Close code for a client dropped because it reads too slowly ("try again later").
pub const CLOSE_TOO_SLOW: u16 = 1013;
