//! The trainers. The supervised ones (`pretrain`, `sft`, `ei`, `orm`, `rcrl`) say what the
//! examples are and what to evaluate, and share `trainer` (the loop), `objective` (what it
//! minimises), `optim` (AdamW and the schedule) and `checkpoint`; EI and RCRL also share
//! `rounds`. The policy-gradient ones (`ppo`, `grpo`) share `pg` (the equations), `pg_spec` (their
//! common settings), `pg_run` (the update loop's harness) and `minibatch` (minibatches cut into
//! micro-batches).

pub mod checkpoint;
pub mod ei;
pub mod grpo;
pub mod minibatch;
pub mod objective;
pub mod optim;
pub mod orm;
pub mod pg;
pub mod pg_run;
pub mod pg_spec;
pub mod ppo;
pub mod pretrain;
pub mod rcrl;
pub mod rounds;
pub mod sft;
pub mod trainer;

pub use objective::{Example, Objective};
pub use optim::{learning_rate, AdamW, Schedule, TrainConfig};
pub use trainer::{make_batches, Trainer};
