use super::*;

fn encode_offsets(entries: &[(u32, u32)]) -> Vec<u8> {
    entries.iter().flat_map(|&(relative_offset, position)| OffsetEntry { relative_offset, position }.encode()).collect()
}

fn check_offsets(entries: &[(u32, u32)], segment_len: u64, valid: bool) {
    let result = decode_offset_index(&encode_offsets(entries), segment_len);
    assert_eq!(result.is_ok(), valid, "{entries:?} in {segment_len} bytes: {result:?}");
}

#[test]
fn offset_index_validation_accepts_only_increasing_in_bounds_entries() {
    check_offsets(&[], 0, true);
    check_offsets(&[(3, 100), (7, 300)], 400, true);
    check_offsets(&[(0, 0)], 400, false); // The segment start is implicit, never stored.
    check_offsets(&[(3, 100), (3, 300)], 400, false);
    check_offsets(&[(3, 100), (7, 100)], 400, false);
    check_offsets(&[(7, 100), (3, 300)], 400, false);
    check_offsets(&[(3, 400)], 400, false);
    let mut bytes = encode_offsets(&[(3, 100)]);
    bytes.push(0);
    assert!(decode_offset_index(&bytes, 400).is_err(), "partial entry");
}

#[test]
fn time_index_validation_requires_matching_offset_entries() {
    let offsets = decode_offset_index(&encode_offsets(&[(3, 100), (7, 300)]), 400).expect("valid");
    let encode = |entries: &[(i64, u32)]| -> Vec<u8> {
        entries
            .iter()
            .flat_map(|&(max_timestamp, relative_offset)| TimeEntry { max_timestamp, relative_offset }.encode())
            .collect()
    };
    assert!(decode_time_index(&encode(&[(10, 3), (20, 7)]), &offsets).is_ok());
    assert!(decode_time_index(&encode(&[(10, 3), (10, 7)]), &offsets).is_err(), "timestamps must increase");
    assert!(decode_time_index(&encode(&[(10, 4)]), &offsets).is_err(), "no offset entry at 4");
    assert!(decode_time_index(&encode(&[(10, 3)])[..11], &offsets).is_err(), "partial entry");
}

#[test]
fn planner_adds_entries_every_interval_and_time_entries_only_when_the_maximum_grows() {
    let mut planner = IndexPlanner::new(100);
    // (relative offset, position, max timestamp) -> expected (offset entry?, time entry?)
    let steps = [
        ((0, 0, 50), (false, false)),
        ((1, 60, 40), (false, false)),
        ((2, 120, 45), (true, true)), // Interval passed; running max 50 is new.
        ((3, 180, 70), (false, false)),
        ((4, 230, 10), (true, true)),  // Running max 70 > 50.
        ((5, 340, 20), (true, false)), // Running max still 70.
    ];
    let index = SegmentIndex::default();
    for ((relative_offset, position, max_timestamp), (want_offset, want_time)) in steps {
        let (offset_entry, time_entry) = planner.on_batch(relative_offset, position, max_timestamp);
        assert_eq!((offset_entry.is_some(), time_entry.is_some()), (want_offset, want_time), "batch {relative_offset}");
        index.push(offset_entry, time_entry);
    }
    assert_eq!(planner.max_timestamp(), Some(70));
    assert_eq!(index.floor_offset(3), Some(OffsetEntry { relative_offset: 2, position: 120 }));
    assert_eq!(index.floor_offset(1), None);
    // One entry of slack: a search starts an entry before the last one below the timestamp.
    assert_eq!(index.floor_time(71), Some(TimeEntry { max_timestamp: 50, relative_offset: 2 }));
    assert_eq!(index.floor_time(60), None);
    assert_eq!(index.floor_time(50), None);
    let (offsets, times) = index.entries();
    assert_eq!(offsets.len(), 3);
    assert_eq!(times.len(), 2);
}
