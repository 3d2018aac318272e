//! Lab addressing: each lab claims a slot `S` (0–255) and the network
//! `10.231.S.0/24`. The lab's switch is a bridge in network namespace
//! `berth-S-sw`; the machine joins it through an uplink veth pair whose
//! machine end holds `10.231.S.1`, and host `hN` through a veth pair whose
//! host end holds `10.231.S.(N+1)`. Names of namespaces and veths derive
//! from slot and index, so labs never collide.

use std::net::Ipv4Addr;

/// Labs a machine can hold at once.
pub const SLOTS: u16 = 256;
/// Hosts one lab can hold: `.2` to `.254` of its /24 (`.0` is the network,
/// `.1` the machine, `.255` the broadcast address).
pub const MAX_HOSTS: u8 = 253;
/// The lab network's prefix length.
const PREFIX_LEN: u8 = 24;
/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";
/// The switch's end of the uplink (a bridge port, in the switch namespace).
const UPLINK_PORT: &str = "uplink";

/// The lab's switch: a namespace with a bridge, and the uplink from the
/// machine's own namespace to it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwitchNet {
    /// The switch's network namespace, e.g. `berth-7-sw`.
    pub netns: String,
    /// The bridge in it.
    pub bridge: String,
    /// The machine's end of the uplink, in the machine's own namespace.
    pub uplink_out: String,
    /// The switch's end of the uplink, a port of the bridge.
    pub uplink_in: String,
    /// The machine's address on the lab network.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl SwitchNet {
    /// The lab network, e.g. `10.231.7.0/24`.
    pub fn network(&self) -> String {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        let network = Ipv4Addr::from(u32::from(self.addr) & mask);
        format!("{network}/{}", self.prefix_len)
    }
}

/// The switch of the lab in `slot`.
pub fn switch_net(slot: u8) -> SwitchNet {
    SwitchNet {
        netns: format!("berth-{slot}-sw"),
        bridge: BRIDGE.to_owned(),
        uplink_out: format!("b{slot}u"),
        uplink_in: UPLINK_PORT.to_owned(),
        addr: Ipv4Addr::new(10, 231, slot, 1),
        prefix_len: PREFIX_LEN,
    }
}

/// Where one lab host lives on the network.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostNet {
    /// The network namespace, e.g. `berth-7-h1`.
    pub netns: String,
    /// The switch's namespace, where `veth_out` is (empty in a lab recorded
    /// by a berth from before the switch, whose `veth_out` was in the
    /// machine's own namespace).
    #[serde(default)]
    pub switch_netns: String,
    /// The switch's end of the host's veth pair, a port of the bridge.
    pub veth_out: String,
    /// The host's end, in its namespace.
    pub veth_in: String,
    /// The machine's own address on the lab network (the same for every
    /// host of a lab), which the host reaches.
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
    HostNet {
        netns: format!("berth-{slot}-h{index}"),
        switch_netns: switch_net(slot).netns,
        veth_out: format!("b{slot}h{index}o"),
        veth_in: format!("b{slot}h{index}i"),
        out_addr: switch_net(slot).addr,
        addr: Ipv4Addr::new(10, 231, slot, index + 1),
        prefix_len: PREFIX_LEN,
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
        assert_eq!(net.switch_netns, "berth-7-sw");
        assert_eq!(
            (net.veth_out.as_str(), net.veth_in.as_str()),
            ("b7h1o", "b7h1i")
        );
        assert_eq!(net.out_addr, Ipv4Addr::new(10, 231, 7, 1));
        assert_eq!(net.addr, Ipv4Addr::new(10, 231, 7, 2));
        assert_eq!(net.prefix_len, 24);
        let switch = switch_net(7);
        assert_eq!(switch.netns, "berth-7-sw");
        assert_eq!(switch.uplink_out, "b7u");
        assert_eq!(switch.addr, net.out_addr);
        assert_eq!(switch.network(), "10.231.7.0/24");
    }

    #[test]
    fn every_address_is_unique_inside_the_lab_range_and_names_fit_linux() {
        let mut addrs = HashSet::new();
        // Names in the machine's own namespace, and namespace names.
        let mut machine_names = HashSet::new();
        let mut namespaces = HashSet::new();
        // Linux interface names hold at most 15 bytes.
        let fits = |name: &str| !name.is_empty() && name.len() <= 15;
        for slot in 0..=255u8 {
            let switch = switch_net(slot);
            assert!(addrs.insert(switch.addr), "{} given twice", switch.addr);
            assert!(machine_names.insert(switch.uplink_out.clone()));
            assert!(namespaces.insert(switch.netns.clone()));
            assert!(fits(&switch.uplink_out) && fits(&switch.uplink_in) && fits(&switch.bridge));
            // Names in the switch's namespace.
            let mut switch_names = HashSet::from([switch.bridge.clone(), switch.uplink_in.clone()]);
            assert_eq!(switch_names.len(), 2);
            for index in 1..=MAX_HOSTS {
                let net = host_net(slot, index);
                assert_eq!(net.addr.octets()[..3], [10, 231, slot]);
                // Neither the network nor the broadcast address of the /24.
                assert!((2..=254).contains(&net.addr.octets()[3]), "{}", net.addr);
                assert!(addrs.insert(net.addr), "{} given twice", net.addr);
                assert_eq!(net.out_addr, switch.addr);
                assert_eq!(net.switch_netns, switch.netns);
                assert!(namespaces.insert(net.netns.clone()));
                assert!(switch_names.insert(net.veth_out.clone()));
                assert!(fits(&net.veth_out) && fits(&net.veth_in));
                assert_ne!(net.veth_in, "lo");
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn index_zero_is_a_bug() {
        host_net(0, 0);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn an_index_past_the_network_is_a_bug() {
        host_net(0, MAX_HOSTS + 1);
    }
}
