//! modelci: did the model get worse? Trains a model with libtorch, evaluates it, gates the
//! result against a baseline, and writes the pull-request comment.
//!
//! The stages, in the order `modelci run` calls them (see [`pipeline`]):
//! [`config`] → [`data`] → `train` → `evaluate` → [`metrics`] → [`gate`] → [`report`].
//! Everything that needs libtorch sits behind the default `torch` feature.

pub mod actions;
pub mod app;
pub mod atomic;
pub mod cli;
pub mod config;
pub mod data;
#[cfg(unix)]
pub mod datasets;
#[cfg(unix)]
pub mod fetch;
pub mod forge;
pub mod gate;
pub mod idx;
pub mod metrics;
pub mod publish;
pub mod report;
pub mod schedule;
pub mod stats;
#[cfg(unix)]
pub mod store;
pub mod tabular;
pub mod ui;

#[cfg(feature = "torch")]
pub mod checkpoint;
#[cfg(feature = "torch")]
pub mod evaluate;
#[cfg(feature = "torch")]
pub mod model;
#[cfg(feature = "torch")]
pub mod pipeline;
#[cfg(feature = "torch")]
pub mod torch;
#[cfg(feature = "torch")]
pub mod train;
