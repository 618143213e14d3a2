//! `imd connector`: the on-premises agent. It registers once (registration key → credential),
//! then keeps one outbound WebSocket to the service and answers its directory questions from
//! AD or OpenLDAP. It never writes to the directory and the bind password never leaves the
//! host. Nothing here imports the service's layers: the wire types in `proto` are the only
//! thing both sides share.

pub mod cli;
pub mod config;
pub mod directory;
pub mod escape;
pub mod proto;
