//! Arbitrary and mangled bytes through every decoder of outside input: none may panic or hang.
//! The bounded, always-run counterpart of the cargo-fuzz targets in `fuzz/`.

use proptest::prelude::*;
use verge_traffic::fuzzing::{detector_parse, traci_decode};
use verge_traffic::traci::codec::{self, Request, Value};

const E1: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- generated <configuration> -->
<detector>
    <interval begin="0.00" end="5.00" id="e1_A1_A0A1_0" nVehContrib="0" flow="0.00" occupancy="0.00" speed="-1.00"/>
    <interval begin="0.00" end="5.00" id="e1_B1_A1B1_0" nVehContrib="2" flow="1440.00" occupancy="12.81" speed="7.80"/>
   <interval begin="5.00" end="10.00" id="e2_A1_A0A1_0" nVehEntered="3" meanSpeed="4.50" meanOccupancy="22.50" maxJamLengthInVehicles="2" />
</detector>
"#;

fn traci_message() -> Vec<u8> {
    codec::encode_requests(&[
        Request::GetVersion,
        Request::SetOrder(2),
        Request::Set {
            domain: 0xC2,
            var: 0x22,
            object: "B1".into(),
            value: Value::Compound(vec![Value::Int(2), Value::StringList(vec!["a".into()])]),
        },
    ])
    .expect("encodes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        traci_decode(&data);
        detector_parse(&data);
    }

    #[test]
    fn mangled_valid_input_never_panics(
        cut in 0usize..2000,
        flips in proptest::collection::vec((0usize..2000, any::<u8>()), 0..8),
    ) {
        for valid in [traci_message(), E1.as_bytes().to_vec()] {
            let mut data = valid.clone();
            for (at, b) in &flips {
                let len = data.len();
                data[at % len] = *b;
            }
            data.truncate(cut % (valid.len() + 1));
            traci_decode(&data);
            detector_parse(&data);
        }
    }
}
