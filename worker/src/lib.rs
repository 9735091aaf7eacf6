//! convoy's worker: what runs next to each training rank.
//!
//! Today this is the rank-side collective, [`collective`]: a TCP ring all-reduce that
//! implements the engine's [`convoy_engine::collective::GradReducer`]. The worker daemon
//! (taking ranks from the coordinator and running them as child processes) comes later.

pub mod collective;
