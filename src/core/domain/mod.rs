//! Domain values: tenants, call records, the call summary, the after-call email and recorded
//! meetings.

pub mod booking;
pub mod call;
pub mod email;
pub mod meeting;
pub mod summary;
pub mod tenant;
