//! The capture stage: the XDP program on the mirror port, its filter maps, the ring-buffer
//! readers and the control loop that ties them to signals.

pub mod counters;
pub mod dc_watch;
pub mod filter;
pub mod loader;
pub mod reader;
pub mod ring;
pub mod run;

pub use filter::{DcSet, PortSet};
pub use loader::{AttachMode, XdpCapture};
