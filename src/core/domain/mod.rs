//! Domain values: tenants, call records, the call summary and the after-call email.

pub mod call;
pub mod email;
pub mod summary;
pub mod tenant;
