//! Integration tests that drive a tidebase server over its listeners. They
//! share one test binary: each binary links all of DataFusion, so one
//! binary instead of three keeps a build's disk footprint down.

mod kafka;
mod tables;
mod wire;
