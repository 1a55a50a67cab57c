//! The pure core. Nothing in here may touch a socket, a file, the environment or the clock:
//! time and sample counts are arguments. `tests/core_is_pure.rs` checks the imports.

pub mod audio;
pub mod borrow;
pub mod domain;
pub mod realtime;
pub mod session;
pub mod twilio;
