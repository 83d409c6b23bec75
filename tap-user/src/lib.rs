//! dctap sensor: captures domain-controller traffic from a mirror port with XDP, turns it
//! into identity activity events and streams them to the cloud.
//!
//! `main.rs` only parses the command line; everything it runs lives here so tests can use it.

pub mod budget;
pub mod capture;
pub mod config;
pub mod decode;
pub mod event;
pub mod evidence;
pub mod flow;
pub mod frames;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod privileges;
pub mod proto;
pub mod signals;
pub mod telemetry;
pub mod time;
pub mod uplink;
