//! Guides: longer explanations that do not belong to one item.

#[cfg_attr(feature = "serde", doc = include_str!("../docs/sending_data.md"))]
#[cfg_attr(
    not(feature = "serde"),
    doc = "Sending data to workers: rkyv, serde, custom codecs and their costs. \
           This page needs the `serde` feature (on by default) to build its examples."
)]
pub mod sending_data {}

#[doc = include_str!("../docs/faults.md")]
pub mod faults {}

#[doc = include_str!("../docs/worker_environment.md")]
pub mod worker_environment {}
