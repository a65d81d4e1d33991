//! A silent network partition: packets to and from one address dropped.

/// Drops every packet to and from one address (both directions, loopback
/// included) until dropped: a silent partition. An nftables table of its own.
pub struct Partition {
    table: String,
}

impl Partition {
    pub fn cut(address: std::net::Ipv4Addr) -> Partition {
        let table = format!(
            "linkops_partition_{}",
            address.to_string().replace('.', "_")
        );
        let rules = format!(
            "table inet {table} {{\n chain out {{\n  type filter hook output priority 0;\n  ip daddr {address} drop\n  ip saddr {address} drop\n }}\n}}\n"
        );
        let status = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut nft| {
                use std::io::Write;
                nft.stdin.take().unwrap().write_all(rules.as_bytes())?;
                nft.wait()
            })
            .expect("nft (Debian's nftables) runs");
        assert!(status.success(), "nft refused {rules}");
        Partition { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status()
            .ok();
    }
}
