//! Domain values: tenants and call records.

pub mod call;
pub mod tenant;
