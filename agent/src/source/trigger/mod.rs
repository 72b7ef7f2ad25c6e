//! Trigger-table capture (SPEC §6 "trigger"): triggers write each change into the
//! capture table `lockstep_changes`, and the source drains it in `seq` order.
//!
//! Built so far: the DDL in every dialect ([`ddl`]). The draining source and the
//! `lockstep triggers` command come next.

pub mod ddl;
pub mod postgres;
