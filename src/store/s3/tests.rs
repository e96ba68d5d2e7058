use super::*;

#[test]
fn parts_cover_multi_terabyte_dumps() {
    // S3's smallest part size is 5 MiB (all but the last part).
    assert_eq!(part_size(1), 5 * MIB);
    assert_eq!(part_size(1000), 5 * MIB);
    assert_eq!(part_size(1001), 10 * MIB);
    assert_eq!(part_size(10_000), (5 * MIB) << 9);
    let tib = 1u64 << 40;
    assert!(capacity(MAX_PARTS) > 4 * tib, "{}", capacity(MAX_PARTS));
    // Dumps up to ~5 GB compressed never leave 5 MiB parts.
    assert_eq!(capacity(1000), 1000 * 5 * MIB as u64);
}

#[test]
fn buffers_stay_within_budget_while_parts_are_small() {
    for n in [1, 1000, 1001] {
        let size = part_size(n);
        let buffers = (parts_in_flight(size) + 1) * size;
        assert!(buffers <= BUFFER_BUDGET + size, "part {n}: {buffers}");
    }
    assert_eq!(parts_in_flight(5 * MIB), 1);
    assert_eq!(parts_in_flight(512 * MIB), 1);
}

#[tokio::test]
async fn fill_reads_exactly_up_to_the_size() {
    let mut r = std::io::Cursor::new(vec![7u8; 10]);
    assert_eq!(fill(&mut r, 4).await.unwrap().len(), 4);
    assert_eq!(fill(&mut r, 100).await.unwrap().len(), 6);
    assert!(fill(&mut r, 100).await.unwrap().is_empty());
}
