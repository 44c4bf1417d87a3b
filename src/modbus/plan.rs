//! Request planner: turns the register values a meter's channels want into as few FC3/FC4 read
//! requests as the meter's `max_registers` and `max_gap` allow, and says where each value sits
//! inside its request. It also derives the smaller fallback plan used after a merged request
//! was refused with exception 02 (SPEC §6.3).
//!
//! Pure and deterministic: no IO, no clock, no logging, and no panics on any input (register
//! specs come from user files). It never splits one value across two requests; decoding the
//! words is `decode`'s job, not this module's.

use std::cmp::Reverse;
use std::fmt;

use super::{MAX_REGISTERS_PER_REQUEST, RegisterSpec, Table};

/// One FC3 (holding) or FC4 (input) read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadRequest {
    pub table: Table,
    /// First register (PDU address).
    pub start: u16,
    /// Number of registers.
    pub count: u16,
}

impl ReadRequest {
    /// One past the last register read (as u32: a request may end exactly at 0x10000).
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

impl fmt::Display for ReadRequest {
    /// `input 0x0000+80`: table, start address in hex, register count.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} 0x{:04X}+{}", self.table, self.start, self.count)
    }
}

/// The read requests for one meter's poll cycle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Ordered by table (holding before input), then start, then count.
    pub requests: Vec<ReadRequest>,
    /// `slots[i] = (r, offset)`: `specs[i]` is read by `requests[r]` and its first word is word
    /// `offset` of the answer. One entry per spec, in the order the specs were given.
    pub slots: Vec<(usize, u16)>,
}

impl Plan {
    /// The indices of the specs read by request `request`, ascending.
    pub fn members(&self, request: usize) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (r, _))| *r == request)
            .map(|(i, _)| i)
            .collect()
    }

    /// Registers read per cycle, wanted or not (what `check` can show as the cost of a plan).
    pub fn registers_read(&self) -> u32 {
        self.requests.iter().map(|r| u32::from(r.count)).sum()
    }
}

/// `max_registers` as the planner uses it: at least 1, at most the protocol's 125.
pub fn effective_max_registers(max_registers: u16) -> u16 {
    max_registers.clamp(1, MAX_REGISTERS_PER_REQUEST)
}

/// Merges `specs` into read requests.
///
/// Specs are visited by (table, address, widest first). The open request grows to take the
/// next value when both hold:
/// - the value starts at most `max_gap` unwanted registers after the request's current end
///   (overlapping or duplicate values count as a gap of 0 and share registers), and
/// - the request, grown to cover the value, is at most `max_registers` long (clamped to
///   1..=125).
///
/// A value that already lies inside the open request always joins it. Otherwise a new request
/// starts at the value. A value wider than `max_registers` gets a request of its own width:
/// values are never split, and such a request is the only way to read the value at all.
///
/// Specs whose registers run past 0xFFFF are planned as given (the request then ends past the
/// address space and the meter refuses it); configuration and profile validation reject them
/// before they get here.
pub fn plan(specs: &[RegisterSpec], max_registers: u16, max_gap: u16) -> Plan {
    let max = u32::from(effective_max_registers(max_registers));
    let gap = u32::from(max_gap);

    let mut order: Vec<usize> = (0..specs.len()).collect();
    // Widest first on equal addresses, so a narrower duplicate finds its words already inside
    // the open request; the index tie-break keeps equal inputs planning identically.
    order.sort_by_key(|&i| {
        let s = &specs[i];
        (s.table, s.address, Reverse(s.data_type.words()), i)
    });

    let mut open: Vec<Open> = Vec::new();
    let mut slots = vec![(0usize, 0u16); specs.len()];
    for &i in &order {
        let s = &specs[i];
        let (start, end) = (u32::from(s.address), s.end());
        let joined = match open.last_mut() {
            Some(cur) if cur.table == s.table && start >= cur.start => {
                let inside = end <= cur.end;
                let near = start <= cur.end.saturating_add(gap);
                let fits = end.max(cur.end) - cur.start <= max;
                if inside || (near && fits) {
                    cur.end = cur.end.max(end);
                    true
                } else {
                    false
                }
            }
            _ => false,
        };
        if !joined {
            open.push(Open {
                table: s.table,
                start,
                end,
            });
        }
        // `open` is non-empty here: either the last request took the value or one was pushed.
        let r = open.len().saturating_sub(1);
        let base = open.get(r).map_or(start, |o| o.start);
        slots[i] = (r, to_u16(start - base));
    }

    Plan {
        requests: open.iter().map(Open::request).collect(),
        slots,
    }
}

/// Widens requests to the register blocks a meter serves whole (a profile's `blocks`, SPEC
/// §6.3: "an Eastron meter reads its whole 80-register block in one request").
///
/// A request lying inside a block of its table becomes the block itself when the block fits
/// `max_registers` and no other request of the plan touches the block's range; the slots of
/// its values move by the registers added in front. Everything else is kept as planned, so a
/// meter configured with a lower `max_registers` than its block, or a plan that needs two
/// requests inside one block, reads exactly what [`plan`] chose. Blocks never add requests.
pub fn widen(mut plan: Plan, blocks: &[ReadRequest], max_registers: u16) -> Plan {
    let max = effective_max_registers(max_registers);
    for r in 0..plan.requests.len() {
        let Some(req) = plan.requests.get(r).copied() else {
            continue;
        };
        let block = blocks.iter().find(|b| {
            b.table == req.table && b.start <= req.start && req.end() <= b.end() && b.count <= max
        });
        let Some(block) = block.copied() else {
            continue;
        };
        let shared = plan.requests.iter().enumerate().any(|(o, other)| {
            o != r
                && other.table == block.table
                && u32::from(other.start) < block.end()
                && u32::from(block.start) < other.end()
        });
        if shared {
            continue;
        }
        let shift = req.start - block.start;
        for slot in plan.slots.iter_mut().filter(|(sr, _)| *sr == r) {
            slot.1 = slot.1.saturating_add(shift);
        }
        if let Some(slot) = plan.requests.get_mut(r) {
            *slot = block;
        }
    }
    plan
}

/// The plan to use after `plan.requests[failed]` was refused with exception 02 (illegal data
/// address), which a meter raises when a merged request covers an address it does not serve
/// (e.g. the EM24's optional export register, or an unmapped hole read as a gap).
///
/// The failed request is replaced by one request per value it held (identical specs still
/// share one request), so the readable values keep working and the next refusal names the one
/// value the meter does not have. Every other request is kept as it was; the result is ordered
/// like [`plan`]'s and its slots are remapped. The caller keeps the returned plan for the meter
/// ("remembers it"), and may apply `fallback` again for another failed request. A request that
/// already reads a single value comes back unchanged: then that value itself is unreadable.
///
/// `specs` must be the specs `plan` was built from; if `failed` is out of range or the specs do
/// not match the plan's slots, the plan is returned unchanged.
pub fn fallback(plan: &Plan, failed: usize, specs: &[RegisterSpec]) -> Plan {
    if failed >= plan.requests.len() || specs.len() != plan.slots.len() {
        return plan.clone();
    }

    // (request, spec indices it serves); the kept requests first, then the split values.
    let mut groups: Vec<(ReadRequest, Vec<usize>)> = plan
        .requests
        .iter()
        .enumerate()
        .filter(|&(r, _)| r != failed)
        .map(|(r, req)| (*req, plan.members(r)))
        .collect();
    let kept = groups.len();
    for i in plan.members(failed) {
        let s = &specs[i];
        let req = ReadRequest {
            table: s.table,
            start: s.address,
            count: s.data_type.words(),
        };
        // Only the split values are deduplicated; a kept request equal to one stays separate.
        match groups[kept..].iter_mut().find(|(g, _)| *g == req) {
            Some((_, members)) => members.push(i),
            None => groups.push((req, vec![i])),
        }
    }
    groups.sort_by_key(|(req, _)| (req.table, req.start, req.count));

    let mut slots = plan.slots.clone();
    for (r, (req, members)) in groups.iter().enumerate() {
        for &i in members {
            let offset = specs[i].address.saturating_sub(req.start);
            slots[i] = (r, offset);
        }
    }
    Plan {
        requests: groups.into_iter().map(|(req, _)| req).collect(),
        slots,
    }
}

/// A request being built; `end` is u32 because a request may end at 0x10000.
struct Open {
    table: Table,
    start: u32,
    end: u32,
}

impl Open {
    fn request(&self) -> ReadRequest {
        ReadRequest {
            table: self.table,
            start: to_u16(self.start),
            count: to_u16(self.end - self.start),
        }
    }
}

/// Starts come from u16 addresses and lengths are at most max(125, 4), so this never
/// saturates; saturating keeps it panic-free should that ever change.
fn to_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::{DEFAULT_MAX_GAP, DataType, WordOrder};
    use proptest::prelude::*;

    fn spec(table: Table, address: u16, data_type: DataType) -> RegisterSpec {
        RegisterSpec {
            table,
            address,
            data_type,
            order: WordOrder::Abcd,
        }
    }

    fn input_f32(address: u16) -> RegisterSpec {
        spec(Table::Input, address, DataType::F32)
    }

    fn req(table: Table, start: u16, count: u16) -> ReadRequest {
        ReadRequest {
            table,
            start,
            count,
        }
    }

    /// The ten common SDM630 quantities plus `total_energy` (0x0156).
    fn sdm630_specs() -> Vec<RegisterSpec> {
        [0, 2, 4, 6, 8, 10, 52, 70, 72, 74, 0x0156]
            .into_iter()
            .map(input_f32)
            .collect()
    }

    /// Every spec's words lie inside the request its slot names, at the slot's offset.
    fn check_slots(p: &Plan, specs: &[RegisterSpec]) {
        assert_eq!(p.slots.len(), specs.len());
        for (s, &(r, off)) in specs.iter().zip(&p.slots) {
            let q = p.requests[r];
            assert_eq!(q.table, s.table, "{s:?} in {q}");
            assert_eq!(
                u32::from(q.start) + u32::from(off),
                u32::from(s.address),
                "{s:?} in {q}"
            );
            assert!(s.end() <= q.end(), "{s:?} in {q}");
        }
    }

    #[test]
    fn sdm630_common_quantities_take_two_requests() {
        let specs = sdm630_specs();
        let p = plan(&specs, 80, 80);
        assert_eq!(
            p.requests,
            vec![req(Table::Input, 0x0000, 76), req(Table::Input, 0x0156, 2)]
        );
        check_slots(&p, &specs);
        assert_eq!(p.slots[7], (0, 70));
        assert_eq!(p.slots[10], (1, 0));
        assert_eq!(p.requests[0].to_string(), "input 0x0000+76");
    }

    #[test]
    fn sdm630_block_fills_exactly_80_registers() {
        let mut specs = sdm630_specs();
        specs.push(input_f32(0x004E));
        let p = plan(&specs, 80, 80);
        assert_eq!(
            p.requests,
            vec![req(Table::Input, 0x0000, 80), req(Table::Input, 0x0156, 2)]
        );
        check_slots(&p, &specs);

        specs.push(input_f32(0x0050));
        let p = plan(&specs, 80, 80);
        assert_eq!(
            p.requests,
            vec![
                req(Table::Input, 0x0000, 80),
                req(Table::Input, 0x0050, 2),
                req(Table::Input, 0x0156, 2)
            ]
        );
        check_slots(&p, &specs);
    }

    #[test]
    fn the_sdm630_block_widens_the_common_quantities_to_80_registers() {
        let specs = sdm630_specs();
        let block = [req(Table::Input, 0x0000, 80)];
        let p = widen(plan(&specs, 80, 80), &block, 80);
        assert_eq!(
            p.requests,
            vec![req(Table::Input, 0x0000, 80), req(Table::Input, 0x0156, 2)]
        );
        check_slots(&p, &specs);
        assert_eq!(p.slots[7], (0, 70));

        // A request that starts inside the block moves its slots by the registers added.
        let late = [input_f32(0x0034), input_f32(0x0048)];
        let p = widen(plan(&late, 80, 80), &block, 80);
        assert_eq!(p.requests, vec![req(Table::Input, 0x0000, 80)]);
        assert_eq!(p.slots, vec![(0, 0x34), (0, 0x48)]);
        check_slots(&p, &late);

        // Not widened: a lower max_registers, another table, two requests in the block, or a
        // request reaching past it.
        let p = widen(plan(&specs, 60, 80), &block, 60);
        assert!(p.requests.iter().all(|r| r.count <= 60), "{p:?}");
        assert_eq!(p, plan(&specs, 60, 80));
        let holding = [RegisterSpec {
            table: Table::Holding,
            ..input_f32(0x0002)
        }];
        assert_eq!(
            widen(plan(&holding, 80, 80), &block, 80).requests,
            vec![req(Table::Holding, 0x0002, 2)]
        );
        let two = [input_f32(0x0000), input_f32(0x0040)];
        let p = plan(&two, 80, 4);
        assert_eq!(p.requests.len(), 2);
        assert_eq!(widen(p.clone(), &block, 80), p);
        let past = [input_f32(0x004E), input_f32(0x0050)];
        let p = plan(&past, 80, 80);
        assert_eq!(widen(p.clone(), &block, 80), p);
    }

    #[test]
    fn gap_larger_than_max_gap_splits() {
        let specs = [input_f32(0), input_f32(2 + 8), input_f32(12 + 9)];
        let p = plan(&specs, 125, 8);
        assert_eq!(
            p.requests,
            vec![req(Table::Input, 0, 12), req(Table::Input, 21, 2)]
        );
        check_slots(&p, &specs);
        // A gap of 0 still merges adjacent values.
        let p = plan(&[input_f32(0), input_f32(2)], 125, 0);
        assert_eq!(p.requests, vec![req(Table::Input, 0, 4)]);
    }

    #[test]
    fn tables_never_merge() {
        let specs = [
            input_f32(0),
            spec(Table::Holding, 0, DataType::F32),
            spec(Table::Holding, 2, DataType::U16),
        ];
        let p = plan(&specs, 125, DEFAULT_MAX_GAP);
        assert_eq!(
            p.requests,
            vec![req(Table::Holding, 0, 3), req(Table::Input, 0, 2)]
        );
        assert_eq!(p.slots, vec![(1, 0), (0, 0), (0, 2)]);
        assert_eq!(p.requests[0].to_string(), "holding 0x0000+3");
    }

    #[test]
    fn value_at_the_top_of_the_address_space() {
        let specs = [
            spec(Table::Holding, 0xFFFC, DataType::U64),
            spec(Table::Holding, 0xFFFF, DataType::U16),
        ];
        let p = plan(&specs, 125, 8);
        assert_eq!(p.requests, vec![req(Table::Holding, 0xFFFC, 4)]);
        assert_eq!(p.slots, vec![(0, 0), (0, 3)]);
    }

    #[test]
    fn overlapping_and_duplicate_specs_share_registers() {
        let specs = [
            spec(Table::Holding, 10, DataType::U16),
            spec(Table::Holding, 8, DataType::U64),
            spec(Table::Holding, 8, DataType::U32),
            spec(Table::Holding, 8, DataType::U64),
            spec(Table::Holding, 11, DataType::F32),
        ];
        let p = plan(&specs, 125, 0);
        assert_eq!(p.requests, vec![req(Table::Holding, 8, 5)]);
        assert_eq!(p.slots, vec![(0, 2), (0, 0), (0, 0), (0, 0), (0, 3)]);
    }

    #[test]
    fn value_wider_than_max_registers_gets_its_own_request() {
        let specs = [
            spec(Table::Holding, 0, DataType::U64),
            spec(Table::Holding, 1, DataType::U16),
            spec(Table::Holding, 4, DataType::U16),
            spec(Table::Holding, 5, DataType::U16),
        ];
        let p = plan(&specs, 2, 8);
        assert_eq!(
            p.requests,
            vec![req(Table::Holding, 0, 4), req(Table::Holding, 4, 2)]
        );
        assert_eq!(p.slots, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
    }

    #[test]
    fn max_registers_is_clamped() {
        let specs: Vec<_> = (0..100)
            .map(|i| spec(Table::Holding, i * 2, DataType::U32))
            .collect();
        let p = plan(&specs, 1000, 8);
        assert_eq!(
            p.requests,
            vec![req(Table::Holding, 0, 124), req(Table::Holding, 124, 76)]
        );
        let p = plan(
            &[
                spec(Table::Holding, 0, DataType::U16),
                spec(Table::Holding, 1, DataType::U16),
            ],
            0,
            8,
        );
        assert_eq!(
            p.requests,
            vec![req(Table::Holding, 0, 1), req(Table::Holding, 1, 1)]
        );
    }

    #[test]
    fn empty_input_plans_nothing() {
        assert_eq!(plan(&[], 125, 8), Plan::default());
    }

    #[test]
    fn plan_is_independent_of_spec_order() {
        let mut specs = sdm630_specs();
        let a = plan(&specs, 80, 80);
        specs.reverse();
        let b = plan(&specs, 80, 80);
        assert_eq!(a.requests, b.requests);
        check_slots(&b, &specs);
    }

    #[test]
    fn fallback_splits_only_the_failed_request() {
        // EM24-like: the merged request reaches the optional export register 0x5C.
        let specs = [
            spec(Table::Input, 0x00, DataType::I32),
            spec(Table::Input, 0x42, DataType::I32),
            spec(Table::Input, 0x5C, DataType::I32),
            spec(Table::Input, 0x42, DataType::I32),
            spec(Table::Holding, 0x10, DataType::U16),
        ];
        let p = plan(&specs, 125, 64);
        assert_eq!(
            p.requests,
            vec![req(Table::Holding, 0x10, 1), req(Table::Input, 0x00, 0x5E)]
        );
        let f = fallback(&p, 1, &specs);
        assert_eq!(
            f.requests,
            vec![
                req(Table::Holding, 0x10, 1),
                req(Table::Input, 0x00, 2),
                req(Table::Input, 0x42, 2),
                req(Table::Input, 0x5C, 2),
            ]
        );
        assert_eq!(f.slots, vec![(1, 0), (2, 0), (3, 0), (2, 0), (0, 0)]);
        check_slots(&f, &specs);
        // Applying it to an already split request changes nothing but stays valid.
        assert_eq!(fallback(&f, 3, &specs), f);
        // Out-of-range or mismatched input leaves the plan alone.
        assert_eq!(fallback(&p, 9, &specs), p);
        assert_eq!(fallback(&p, 0, &specs[..2]), p);
    }

    fn arb_spec() -> impl Strategy<Value = RegisterSpec> {
        let types = DataType::ALL;
        (
            any::<bool>(),
            prop_oneof![any::<u16>(), 0u16..300, 0xFF00u16..=0xFFFF],
            0..types.len(),
        )
            .prop_map(move |(input, address, t)| RegisterSpec {
                table: if input { Table::Input } else { Table::Holding },
                address,
                data_type: types[t],
                order: WordOrder::Abcd,
            })
    }

    fn arb_block() -> impl Strategy<Value = ReadRequest> {
        (
            any::<bool>(),
            prop_oneof![0u16..300, any::<u16>()],
            1u16..=130,
        )
            .prop_map(|(input, start, count)| ReadRequest {
                table: if input { Table::Input } else { Table::Holding },
                start,
                count: count.min(u16::try_from(0x1_0000 - u32::from(start)).unwrap_or(1)),
            })
    }

    fn check_plan(p: &Plan, specs: &[RegisterSpec], max_registers: u16) {
        check_slots(p, specs);
        let max = effective_max_registers(max_registers);
        for (r, q) in p.requests.iter().enumerate() {
            let members = p.members(r);
            assert!(!members.is_empty(), "{q} reads nothing");
            assert!(q.count >= 1);
            if q.count > max {
                // Only a value wider than the limit may exceed it: the request is exactly that
                // value (values lying inside it may share its words).
                assert!(
                    members
                        .iter()
                        .any(|&i| specs[i].address == q.start
                            && specs[i].data_type.words() == q.count),
                    "{q} exceeds {max}"
                );
            }
        }
        for w in p.requests.windows(2) {
            assert!((w[0].table, w[0].start, w[0].count) <= (w[1].table, w[1].start, w[1].count));
        }
    }

    proptest! {
        #[test]
        fn plans_are_sound(
            specs in proptest::collection::vec(arb_spec(), 0..60),
            max_registers in prop_oneof![0u16..=10, 0u16..=200, Just(u16::MAX)],
            max_gap in prop_oneof![0u16..=20, any::<u16>()],
            blocks in proptest::collection::vec(arb_block(), 0..4),
        ) {
            let p = plan(&specs, max_registers, max_gap);
            check_plan(&p, &specs, max_registers);
            prop_assert_eq!(&p, &plan(&specs, max_registers, max_gap));
            let w = widen(p.clone(), &blocks, max_registers);
            check_plan(&w, &specs, max_registers);
            prop_assert_eq!(w.requests.len(), p.requests.len());
            for failed in 0..p.requests.len() + 1 {
                let f = fallback(&p, failed, &specs);
                check_plan(&f, &specs, max_registers);
                prop_assert!(f.requests.len() >= p.requests.len());
            }
        }
    }
}
