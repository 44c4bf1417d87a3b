//! The fault-injection suite (reliability promises R1–R17 of `../shared/reference/reliability.md`
//! §7, adapted to one reading per request): the real daemon binary under crashes, power cuts,
//! full disks, broken networks and APIs, corrupt files, clock jumps and failing meters. CI runs
//! the CI-sized settings; `ENECTIVA_FAULTS_LONG=1 cargo test --release --test faults` runs the
//! release-check sizes. Results: RELIABILITY.md.

mod clock;
mod corrupt;
mod crash;
mod disk;
mod harness;
mod meters;
mod network;
mod power;
mod stop;
