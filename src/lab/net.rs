//! Lab addressing: each lab claims a slot `S` (0–255), and its host `hN`
//! gets the /30 network `10.231.S.4N/30`: the machine's side of the veth is
//! `.4N+1`, the host's own address `.4N+2`. Names of namespaces and veths
//! derive from slot and index, so labs never collide.

use std::net::Ipv4Addr;

/// Labs a machine can hold at once.
pub const SLOTS: u16 = 256;
/// Hosts one lab can hold.
pub const MAX_HOSTS: u8 = 63;

/// Where one lab host lives on the network.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostNet {
    /// The network namespace, e.g. `berth-7-h1`.
    pub netns: String,
    /// The machine's end of the veth pair.
    pub veth_out: String,
    /// The host's end, moved into its namespace.
    pub veth_in: String,
    pub out_addr: Ipv4Addr,
    /// The address the host answers on.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// The network of host `index` (1-based) of the lab in `slot`.
pub fn host_net(slot: u8, index: u8) -> HostNet {
    assert!(
        (1..=MAX_HOSTS).contains(&index),
        "lab host index {index} out of range"
    );
    let base = 4 * index;
    HostNet {
        netns: format!("berth-{slot}-h{index}"),
        veth_out: format!("b{slot}h{index}o"),
        veth_in: format!("b{slot}h{index}i"),
        out_addr: Ipv4Addr::new(10, 231, slot, base + 1),
        addr: Ipv4Addr::new(10, 231, slot, base + 2),
        prefix_len: 30,
    }
}

/// The lab host name of index `index`.
pub fn host_name(index: u8) -> String {
    format!("h{index}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn first_host_of_a_slot() {
        let net = host_net(7, 1);
        assert_eq!(net.netns, "berth-7-h1");
        assert_eq!(
            (net.veth_out.as_str(), net.veth_in.as_str()),
            ("b7h1o", "b7h1i")
        );
        assert_eq!(net.out_addr, Ipv4Addr::new(10, 231, 7, 5));
        assert_eq!(net.addr, Ipv4Addr::new(10, 231, 7, 6));
    }

    #[test]
    fn every_address_is_unique_inside_the_lab_range_and_names_fit_linux() {
        let mut seen = HashSet::new();
        for slot in 0..=255u8 {
            for index in 1..=MAX_HOSTS {
                let net = host_net(slot, index);
                for addr in [net.out_addr, net.addr] {
                    assert_eq!(addr.octets()[..2], [10, 231]);
                    assert!(seen.insert(addr), "{addr} given twice");
                }
                // Both ends share one /30 that holds neither network nor broadcast address.
                let [.., last] = net.addr.octets();
                assert_eq!(last % 4, 2);
                assert_eq!(net.out_addr.octets()[3] % 4, 1);
                // Linux interface names hold at most 15 bytes.
                assert!(net.veth_out.len() <= 15 && net.veth_in.len() <= 15);
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn index_zero_is_a_bug() {
        host_net(0, 0);
    }
}
