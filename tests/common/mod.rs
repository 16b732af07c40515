//! The workspace's one test harness, `seqd-test-support` (test-support/), under the name
//! tests written with `mod common;` use: nothing is defined here. New tests import
//! `seqd_test_support` directly.
pub use seqd_test_support::*;
