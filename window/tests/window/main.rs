//! Integration tests of the window crate, in one test binary (each binary
//! links all of DataFusion).

mod customers;
mod regrouped;
mod sorted;
