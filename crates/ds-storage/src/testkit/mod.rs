//! The storage contract suite: every behaviour a [`Storage`] backend must show,
//! written once and run against every backend.
//!
//! A backend crate enables the `testkit` feature as a dev-dependency, implements [`Harness`] for
//! its store, and joins with one line in `tests/it/contract.rs`:
//!
//! ```ignore
//! ds_storage::contract_tests!(MemoryHarness::new());
//! ```
//!
//! [`contract_tests!`](crate::contract_tests) expands into one `#[test]` per case, grouped in one
//! module per area (`contract::fork::deleting_last_fork_cascades_to_soft_deleted_source`), so a
//! failure names both the backend crate and the behaviour.
//!
//! Each case is an `async fn(&H)` in the module of its area. Cases that need a restart ask the
//! harness's [`Capabilities`]: on a backend that keeps nothing across a restart they print that
//! they were skipped and why, and pass without asserting anything.
//!
//! Time never passes on its own: the harness builds every store with the [`ManualClock`] it
//! hands out, and expiry cases move that clock.

// reason: every case panics on a contract violation; that is what a test is for.
#![allow(clippy::missing_panics_doc)]

use std::future::Future;
use std::sync::Arc;

use crate::Storage;
use crate::rules::ManualClock;

/// Asserts that an expression matches a pattern, printing the value when it does not.
macro_rules! assert_matches {
    ($value:expr, $pattern:pat $(if $guard:expr)? $(,)?) => {
        match $value {
            $pattern $(if $guard)? => {}
            ref other => panic!(
                "expected {}, got {:?}",
                stringify!($pattern $(if $guard)?),
                other
            ),
        }
    };
}

mod support;

pub mod append;
pub mod closure;
pub mod concurrency;
pub mod create;
pub mod delete;
pub mod expiry;
pub mod export;
pub mod fork;
pub mod limits;
pub mod live;
pub mod producer;
pub mod read;
pub mod restart;

/// What a backend can do beyond the [`Storage`] trait, so cases that need it can skip openly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Data survives dropping the store and opening it again ([`Harness::reopen`]).
    pub persistent: bool,
}

/// Limits a case can ask a store to be opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Upper bound on payload bytes of one stream (`limits.max_stream_bytes`).
    pub max_stream_bytes: u64,
}

impl Default for Limits {
    /// Large enough that no case runs into it by accident.
    fn default() -> Self {
        Limits {
            max_stream_bytes: 64 * 1024 * 1024,
        }
    }
}

/// How the contract suite opens a backend.
///
/// One harness value serves one test case: [`contract_tests!`](crate::contract_tests)
/// evaluates the harness expression afresh for every case, so a persistent backend can own a
/// temporary directory for the length of one case.
pub trait Harness {
    /// The store under test.
    type Store: Storage;

    /// Opens a fresh, empty store with the given limits, using [`Harness::clock`] for time.
    fn open_with(&self, limits: Limits) -> impl Future<Output = Self::Store>;

    /// Opens a fresh, empty store with default [`Limits`].
    fn open(&self) -> impl Future<Output = Self::Store> {
        self.open_with(Limits::default())
    }

    /// Drops `store` as a process exit would and opens the same data again. Only called when
    /// [`Capabilities::persistent`] is true.
    fn reopen(&self, store: Self::Store) -> impl Future<Output = Self::Store>;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// The clock every store of this harness reads.
    fn clock(&self) -> Arc<ManualClock>;
}

/// Which tokio runtime a case runs on.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// One thread; the default.
    CurrentThread,
    /// Several worker threads, for the concurrency cases.
    MultiThread,
}

/// Runs one case to completion on a fresh runtime (used by [`contract_tests!`](crate::contract_tests)).
#[doc(hidden)]
pub fn run<F: Future<Output = ()>>(flavor: Flavor, case: F) {
    let mut builder = match flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Flavor::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(4);
            b
        }
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("a test runtime can be built");
    runtime.block_on(case);
}

/// Expands into one `#[test]` per contract case, run against the harness `$harness` (an
/// expression evaluated afresh for each case).
///
/// The tests are grouped in one module per area, named like the case modules of
/// [`ds_storage::testkit`](crate::testkit).
#[macro_export]
macro_rules! contract_tests {
    ($harness:expr) => {
        $crate::__contract_cases!(@list [tests $harness]);
    };
}

/// The case list, expanded either into tests or (for the completeness check) into names.
#[doc(hidden)]
#[macro_export]
macro_rules! __contract_cases {
    (@list [$($mode:tt)*]) => {
        $crate::__contract_cases! { @expand [$($mode)*]
            create [CurrentThread] {
                create_new_stream_starts_empty_and_open,
                create_with_body_sets_tail_after_it,
                create_without_content_type_uses_default,
                create_with_same_config_is_idempotent,
                create_with_different_content_type_conflicts,
                create_with_different_ttl_conflicts,
                create_with_different_expires_at_conflicts,
                create_with_different_closure_status_conflicts,
                create_matching_closed_stream_is_idempotent,
                create_content_type_compare_ignores_case_and_params,
                create_closed_with_body_holds_final_content,
                create_closed_without_body_is_empty_eof,
                create_json_with_empty_array_stores_nothing,
                create_json_flattens_initial_array,
                create_json_with_invalid_body_is_rejected,
                create_on_soft_deleted_name_is_rejected,
                list_returns_live_streams_in_name_order,
            }
            append [CurrentThread] {
                append_offsets_strictly_increase,
                append_returns_new_tail_and_updates_head,
                append_to_missing_stream_is_not_found,
                append_with_mismatched_content_type_is_rejected,
                append_content_type_compare_ignores_case_and_params,
                append_empty_body_without_close_is_rejected,
                append_stream_seq_must_strictly_increase,
                append_stream_seq_is_compared_bytewise,
                append_rejected_stream_seq_is_not_recorded,
                json_append_flattens_one_array_level,
                json_append_keeps_each_post_a_distinct_unit,
                json_append_of_empty_array_is_rejected,
                json_append_of_invalid_json_is_rejected,
            }
            closure [CurrentThread] {
                append_after_close_is_rejected_with_final_tail,
                closed_takes_precedence_over_content_type_mismatch,
                closed_takes_precedence_over_empty_body,
                close_only_closes_without_data,
                close_only_on_closed_stream_is_already_closed,
                append_and_close_is_atomic,
                append_and_close_on_closed_stream_is_rejected,
                closed_stream_stays_readable,
            }
            producer [CurrentThread] {
                producer_first_append_must_be_seq_zero,
                producer_sequential_appends_are_accepted,
                producer_may_start_at_any_epoch,
                producer_duplicate_returns_highest_accepted_seq,
                producer_duplicate_does_not_duplicate_data,
                producer_stale_epoch_is_fenced,
                producer_seq_gap_is_rejected,
                producer_epoch_bump_must_start_at_seq_zero,
                producer_epoch_bump_resets_sequence,
                producers_are_independent,
                producer_rejected_append_does_not_advance_state,
                producer_duplicate_ignores_stream_seq,
                producer_close_retry_of_closing_tuple_is_duplicate,
                producer_close_only_retry_is_duplicate,
                producer_other_tuple_on_closed_stream_is_closed,
                producer_stale_epoch_on_closed_stream_is_fenced,
            }
            read [CurrentThread] {
                read_from_start_returns_all_data,
                read_of_empty_stream_is_up_to_date,
                read_from_mid_stream_offset_returns_the_rest,
                read_chunk_reports_stream_and_position,
                read_with_small_limit_returns_prefix_and_resumes_exactly,
                read_in_small_chunks_reassembles_the_bytes,
                json_read_returns_whole_messages,
                json_read_returns_at_least_one_message,
                read_from_tail_returns_no_data,
                read_from_tail_of_closed_stream_reports_closed,
                read_partial_chunk_is_neither_up_to_date_nor_closed,
                read_at_final_offset_of_closed_stream_is_eof,
                read_with_offset_beyond_tail_is_rejected,
                read_with_offset_not_on_a_position_is_rejected,
                reads_are_byte_exact,
                read_of_missing_stream_is_not_found,
                read_regions_answers_what_read_answers,
            }
            delete [CurrentThread] {
                deleted_stream_is_not_found,
                delete_of_missing_stream_is_not_found,
                recreate_after_delete_is_a_new_stream,
                deleted_stream_is_not_listed,
            }
            fork [CurrentThread] {
                fork_defaults_to_source_tail,
                fork_at_offset_inherits_data_before_it,
                fork_at_zero_inherits_nothing,
                fork_binary_sub_offset_splits_a_record,
                fork_sub_offset_equal_to_record_length_is_allowed,
                fork_binary_sub_offset_overshoot_is_rejected,
                fork_json_sub_offset_counts_messages_of_a_batch,
                fork_json_sub_offset_overshoot_is_rejected,
                fork_of_fork_composes,
                fork_of_fork_with_sub_offset_in_inherited_data,
                fork_does_not_see_source_appends_after_fork,
                fork_appends_do_not_affect_source,
                fork_of_closed_source_starts_open,
                fork_inherits_content_type,
                fork_json_read_spans_the_boundary,
                fork_with_mismatched_content_type_leaves_no_reference,
                fork_does_not_inherit_writer_state,
                deleting_forked_source_soft_deletes_it,
                soft_deleted_source_stays_readable_through_fork,
                deleting_last_fork_cascades_to_soft_deleted_source,
                deleting_source_after_its_forks_removes_it,
                cascade_runs_up_a_three_level_chain,
                fork_recreate_with_same_config_is_idempotent,
                fork_recreate_with_different_config_conflicts,
                fork_of_missing_source_is_rejected,
                fork_of_soft_deleted_source_is_rejected,
                fork_offset_beyond_source_tail_is_rejected,
            }
            expiry [CurrentThread] {
                ttl_stream_expires_after_idle_period,
                read_slides_ttl,
                append_slides_ttl,
                head_does_not_slide_ttl,
                expires_at_is_absolute,
                expired_stream_is_not_found_everywhere,
                expired_stream_can_be_recreated,
                expired_stream_is_not_listed,
                sweep_reclaims_expired_streams,
                expired_source_with_live_fork_is_gone,
                sweep_keeps_expired_source_for_its_forks,
                fork_expiry_follows_inheritance_table,
                inherited_ttl_slides_independently,
            }
            live [CurrentThread] {
                subscribe_starts_at_current_tail,
                subscriber_sees_append,
                subscriber_sees_close,
                subscriber_sees_delete,
                subscriber_sees_soft_delete,
                fork_subscriber_ignores_source_appends,
                subscribe_to_missing_stream_is_not_found,
            }
            limits [CurrentThread] {
                append_beyond_max_stream_bytes_is_rejected_and_writes_nothing,
                create_beyond_max_stream_bytes_is_rejected,
            }
            concurrency [MultiThread] {
                concurrent_appends_land_exactly_once,
                concurrent_producer_appends_end_in_seq_order,
                concurrent_appends_to_two_streams_stay_separate,
                concurrent_creates_of_one_name_make_one_stream,
                concurrent_fork_and_delete_never_lose_inherited_data,
                reads_racing_a_delete_see_all_or_nothing,
            }
            export [CurrentThread] {
                export_meta_reports_fork_point_base_and_writer_state,
                export_meta_survives_restart,
                restore_writer_applies_producers_and_stream_seq,
                restore_writer_closes_and_never_reopens,
                restore_writer_survives_restart,
                byte_reads_keep_append_boundaries,
            }
            restart [CurrentThread] {
                data_survives_restart,
                closure_survives_restart,
                producer_state_survives_restart,
                stream_seq_survives_restart,
                expiry_survives_restart,
                forks_and_soft_deletes_survive_restart,
                recreated_stream_after_restart_gets_new_id,
            }
        }
    };
    (@expand [tests $harness:expr]
        $( $module:ident [$flavor:ident] { $($case:ident),* $(,)? } )*
    ) => {
        $(
            mod $module {
                #[allow(unused_imports)]
                use super::*;
                $(
                    #[test]
                    fn $case() {
                        let harness = $harness;
                        $crate::testkit::run(
                            $crate::testkit::Flavor::$flavor,
                            $crate::testkit::$module::$case(&harness),
                        );
                    }
                )*
            }
        )*
    };
    (@expand [names]
        $( $module:ident [$flavor:ident] { $($case:ident),* $(,)? } )*
    ) => {
        &[ $( $( concat!(stringify!($module), "::", stringify!($case)) ),* ),* ]
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` case in the area modules, as `module::case`.
    fn declared_cases() -> Vec<String> {
        let sources = [
            ("append", include_str!("append.rs")),
            ("closure", include_str!("closure.rs")),
            ("concurrency", include_str!("concurrency.rs")),
            ("create", include_str!("create.rs")),
            ("delete", include_str!("delete.rs")),
            ("expiry", include_str!("expiry.rs")),
            ("export", include_str!("export.rs")),
            ("fork", include_str!("fork.rs")),
            ("limits", include_str!("limits.rs")),
            ("live", include_str!("live.rs")),
            ("producer", include_str!("producer.rs")),
            ("read", include_str!("read.rs")),
            ("restart", include_str!("restart.rs")),
        ];
        let mut out = Vec::new();
        for (module, text) in sources {
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("pub async fn ") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    out.push(format!("{module}::{name}"));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn every_case_is_in_the_macro_list_once() {
        let listed: &[&str] = crate::__contract_cases!(@list [names]);
        let mut listed: Vec<String> = listed.iter().map(ToString::to_string).collect();
        listed.sort();
        let before = listed.len();
        listed.dedup();
        assert_eq!(before, listed.len(), "a case is listed twice");
        assert_eq!(listed, declared_cases());
    }
}
