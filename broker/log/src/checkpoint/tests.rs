use super::*;

fn sample() -> Checkpoint {
    Checkpoint {
        clean: true,
        recovery_point: 100,
        durable: LogPoint { segment_base: 200, position: 4096, next_offset: 250 },
    }
}

#[test]
fn checkpoint_round_trips_and_has_the_documented_layout() {
    let bytes = sample().encode();
    assert_eq!(&bytes[0..4], b"FCKP");
    assert_eq!(&bytes[4..6], &[0, 1]);
    assert_eq!(bytes[6], 1);
    assert_eq!(&bytes[8..16], &100u64.to_be_bytes());
    assert_eq!(&bytes[16..24], &200u64.to_be_bytes());
    assert_eq!(&bytes[24..32], &4096u64.to_be_bytes());
    assert_eq!(&bytes[32..40], &250u64.to_be_bytes());
    assert_eq!(&bytes[44..48], &crc32c::crc32c(&bytes[..44]).to_be_bytes());
    assert_eq!(Checkpoint::decode(&bytes), Ok(sample()));
}

#[test]
fn every_bit_flip_and_every_truncation_is_rejected() {
    let bytes = sample().encode();
    for bit in 0..CHECKPOINT_BYTES * 8 {
        let mut flipped = bytes;
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(Checkpoint::decode(&flipped).is_err(), "bit {bit}");
    }
    for len in 0..CHECKPOINT_BYTES {
        assert!(Checkpoint::decode(&bytes[..len]).is_err(), "length {len}");
    }
    assert!(Checkpoint::decode(&[0u8; CHECKPOINT_BYTES]).is_err(), "zeroed");
}
