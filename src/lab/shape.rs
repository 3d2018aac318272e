//! Link shaping: a rate limit on the lab's uplink and on each host's link,
//! made with tc's token bucket filter (`tbf`) on the egress of each veth end,
//! so both directions are limited. Only rates: the kernels this runs on lack
//! `netem` ("qdisc kind is unknown"), so there is no delay or loss emulation.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::process::Cmd;

/// A link rate as tc writes it: a number and a unit among `kbit`, `mbit`,
/// `gbit` (powers of 1000, as tc counts them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    /// As given, with the unit in lower case, e.g. `100mbit`.
    text: String,
    bits_per_second: u64,
}

const UNITS: [(&str, u64); 3] = [
    ("kbit", 1_000),
    ("mbit", 1_000_000),
    ("gbit", 1_000_000_000),
];

/// What a rate must look like, for error messages.
pub const RATE_SYNTAX: &str = "a rate is a number and a unit among kbit, mbit, gbit";

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, String> {
        let lower = text.trim().to_ascii_lowercase();
        let bad = || format!("`{text}` is not a rate: {RATE_SYNTAX}");
        let (number, unit) = UNITS
            .iter()
            .find_map(|&(unit, scale)| Some((lower.strip_suffix(unit)?, scale)))
            .ok_or_else(bad)?;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || number.ends_with('.') {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bits = value * unit as f64;
        if bits < 1_000.0 {
            return Err(format!("`{text}` is below the lowest rate, 1kbit"));
        }
        // tc takes 64-bit rates; anything near that is a typo.
        if bits > 1e12 {
            return Err(format!("`{text}` is above the highest rate, 1000gbit"));
        }
        Ok(Rate {
            text: lower,
            bits_per_second: bits.round() as u64,
        })
    }

    pub fn bits_per_second(&self) -> u64 {
        self.bits_per_second
    }

    /// The token bucket's size in bytes.
    ///
    /// tbf sends a packet only when the bucket holds tokens for it, and
    /// refills between wake-ups of its watchdog timer and of the softirq that
    /// drains the device; those come late by up to a scheduler tick (4 ms at
    /// HZ=250, the coarsest common kernel setting). A bucket smaller than
    /// what the rate carries in that time empties before the next wake-up
    /// and the link idles, so the measured rate falls short of the set one
    /// (markedly so at gigabit rates). Hence 1/250 s worth of the rate, and
    /// at least 32 KiB so a low rate still passes a few full-size packets
    /// and TSO bursts at once (a segmentation-offload packet larger than the
    /// bucket is cut into MTU-sized ones by tbf: correct, only slower).
    pub fn burst_bytes(&self) -> u64 {
        (self.bits_per_second / 8 / 250).max(32 * 1024)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(text: String) -> Result<Rate, String> {
        Rate::parse(&text)
    }
}

impl From<Rate> for String {
    fn from(rate: Rate) -> String {
        rate.text
    }
}

/// How a lab's links are limited; `None` leaves a link unshaped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shaping {
    /// The machine↔lab uplink, each direction.
    pub uplink: Option<Rate>,
    /// Each host's link to the switch, each direction.
    pub link: Option<Rate>,
}

impl Shaping {
    pub fn is_some(&self) -> bool {
        self.uplink.is_some() || self.link.is_some()
    }
}

/// How long a packet may wait in a tbf queue: the queue holds this much
/// time's worth of the rate (plus the bucket) before it drops. Long enough
/// that TCP keeps a shaped link full without loss at every window step, short
/// enough not to add seconds of queueing delay (bufferbloat) to interactive
/// SSH sessions sharing the link.
const TBF_LATENCY: &str = "50ms";

/// `tc [-n NETNS] qdisc add dev DEV root tbf …`: limits what `dev` sends.
pub fn tbf_cmd(netns: Option<&str>, dev: &str, rate: &Rate) -> Cmd {
    let mut cmd = Cmd::new("tc");
    if let Some(netns) = netns {
        cmd = cmd.args(["-n", netns]);
    }
    cmd.args(["qdisc", "add", "dev", dev, "root", "tbf", "rate"])
        .arg(format!("{}bit", rate.bits_per_second()))
        .arg("burst")
        .arg(rate.burst_bytes().to_string())
        .args(["latency", TBF_LATENCY])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_tc_units() {
        let rate = Rate::parse("100mbit").unwrap();
        assert_eq!(rate.bits_per_second(), 100_000_000);
        assert_eq!(rate.to_string(), "100mbit");
        assert_eq!(
            Rate::parse("1Gbit").unwrap().bits_per_second(),
            1_000_000_000
        );
        assert_eq!(Rate::parse("1Gbit").unwrap().to_string(), "1gbit");
        assert_eq!(Rate::parse("1.5mbit").unwrap().bits_per_second(), 1_500_000);
        assert_eq!(Rate::parse("64kbit").unwrap().bits_per_second(), 64_000);
    }

    #[test]
    fn what_is_not_a_rate_is_refused() {
        for bad in [
            "",
            "100",
            "mbit",
            "100mb",
            "100mbps",
            "100 mbit",
            "-1mbit",
            "1e3kbit",
            ".5mbit",
            "5.mbit",
            "1.2.3mbit",
            "100bit",
            "0kbit",
        ] {
            let err = Rate::parse(bad).expect_err(bad);
            assert!(
                err.contains("kbit") || err.contains("lowest"),
                "{bad:?}: {err}"
            );
        }
        assert!(Rate::parse("2000gbit").unwrap_err().contains("highest"));
    }

    #[test]
    fn rates_are_recorded_as_text() {
        let shaping = Shaping {
            uplink: Some(Rate::parse("100mbit").unwrap()),
            link: None,
        };
        let json = serde_json::to_string(&shaping).unwrap();
        assert_eq!(json, r#"{"uplink":"100mbit","link":null}"#);
        assert_eq!(serde_json::from_str::<Shaping>(&json).unwrap(), shaping);
        assert!(serde_json::from_str::<Shaping>(r#"{"uplink":"fast","link":null}"#).is_err());
    }

    #[test]
    fn the_bucket_outlasts_a_tick_and_holds_a_burst_of_packets() {
        let burst = |r: &str| Rate::parse(r).unwrap().burst_bytes();
        assert_eq!(burst("1gbit"), 500_000);
        assert_eq!(burst("100mbit"), 50_000);
        assert_eq!(burst("1mbit"), 32 * 1024);
        let cmd = tbf_cmd(
            Some("berth-3-sw"),
            "uplink",
            &Rate::parse("100mbit").unwrap(),
        );
        assert_eq!(
            cmd.to_string(),
            "tc -n berth-3-sw qdisc add dev uplink root tbf rate 100000000bit burst 50000 latency 50ms"
        );
        let cmd = tbf_cmd(None, "b3u", &Rate::parse("1gbit").unwrap());
        assert_eq!(
            cmd.to_string(),
            "tc qdisc add dev b3u root tbf rate 1000000000bit burst 500000 latency 50ms"
        );
    }
}
