//! The measurements, one module each, in the order of the table's rows; `--only` names them.

mod api;
mod blank_pool;
mod cold_start;
mod exits;
mod invoke;
mod jail;
mod mem;
mod rate;
mod serial;
mod snapshot;
mod teardown;

use crate::opts::Opts;
use crate::table::Table;

/// One measurement: adds its rows to the table, or says why it could not.
pub type Bench = fn(&Opts, &mut Table) -> Result<(), String>;

/// Every measurement with its `--only` name, in order.
pub const ALL: [(&str, Bench); 10] = [
    ("api", api::bench_api),
    ("serial", serial::bench_serial),
    ("jail", jail::bench_jail),
    ("mem", mem::bench_mem),
    ("rate", rate::bench_rate),
    ("teardown", teardown::bench_teardown),
    ("invoke", invoke::bench_invoke),
    ("snapshot", snapshot::bench_snapshot),
    ("blank", blank_pool::bench_blank_pool),
    ("exits", exits::bench_exits),
];
