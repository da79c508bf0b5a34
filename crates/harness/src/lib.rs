//! The shared plumbing of the rows, so that each row's `process.rs` and `thread.rs` read like
//! textbook examples: child control and cleanup, timing and statistics, CPU placement, the
//! report model with its JSON and table rendering, and the common row CLI.

pub mod awake;
pub mod bare;
pub mod busy;
pub mod child;
pub mod cleanup;
pub mod cpu;
pub mod faults;
pub mod futex;
pub mod limits;
pub mod mem;
pub mod panics;
pub mod pipe;
pub mod poll;
pub mod render;
pub mod report;
pub mod row;
pub mod runlog;
pub mod shm;
pub mod stats;

pub use child::{
    Alarm, Child, Exit, Status, Usage, Watch, deliver, fork_child, fork_child_keeping, no_core_dump, received,
    spawn_sacrificial, wait_all, wait_any,
};
pub use limits::{Needs, Room};
pub use report::{Better, Expected, Kind, Report, Side, Verdict};
pub use row::{Ctx, Findings, Row, Spec};
