//! What one member may make the scheduler hold. The scheduler's state is
//! budgeted at `STATE_BUDGET_BYTES`; a member (one host id, one
//! certificate) gets at most `MEMBER_SHARE_BYTES` of it, so a compromised
//! node can take the scheduler no further than that.
//!
//! Charges are estimates of what a call makes the state hold, on the
//! generous side (map entries and allocator overhead included), recounted
//! from what is really held at every sweep.

/// The memory the scheduler's soft state is sized for.
pub const STATE_BUDGET_BYTES: u64 = 1024 * 1024 * 1024;
/// One member's share of it: 5 %.
pub const MEMBER_SHARE_BYTES: u64 = STATE_BUDGET_BYTES / 20;
/// What a member's calls may be charged: 4 % of the budget, the last 1 %
/// of its share left for what charges do not see (map growth, allocator
/// slack; measured at 2-3 % over the charges in `e2e/tests/trust.rs`
/// `a_member_cannot_take_the_scheduler_past_its_share_of_memory`). An
/// honest host creating 20,000 tasks of 1,000 pieces is charged ~36 MB.
pub const MEMBER_CHARGE_BYTES: u64 = STATE_BUDGET_BYTES / 25;
