//! What the service knows about directories reached through connectors: the hub of live
//! connector channels (`hub`), the service's end of a channel (`channel`), and the calls the
//! resolvers and the admin API make through them. A connector is attached to one replica;
//! a call arriving at another replica is forwarded to the replica holding a channel, found
//! through the `connector_sessions` rows every replica keeps (docs/connector-protocol.md).
//! Entra ID is reached directly, through Microsoft Graph (`graph`).

pub mod channel;
pub mod graph;
pub mod hub;

pub use hub::{CallError, ForwardRequest, ForwardResponse, Hub, HubSettings};
