//! The peers on the same simulated fleet: parallel-ssh and Ansible.

use super::*;

/// A peer's time reading every client id, and how many hosts answered (down
/// and rekeyed ones cannot).
pub(super) struct PeerRun {
    pub took: Duration,
    pub answered: usize,
}

/// The peers' runs; `None` for one not run.
pub(super) struct Peers {
    pub pssh: Option<PeerRun>,
    pub ansible: Option<PeerRun>,
}

/// `parallel-ssh -p 200`, and `ansible -m raw -f 200` when asked, reading every client id.
pub(super) fn peers(
    spec: &Spec,
    key: &Path,
    known_hosts: &Path,
    dir: &Path,
    with_ansible: bool,
) -> Peers {
    let hosts: Vec<String> = (spec.first..spec.first + spec.count)
        .map(|index| format!("{}:{}", simulated::address(index), simulated::PORT))
        .collect();
    let list = dir.join("pssh-hosts");
    std::fs::write(&list, hosts.join("\n") + "\n").unwrap();
    let started = Instant::now();
    let pssh = Command::new("parallel-ssh")
        .args(["-p", "200", "-t", "30", "-l", "bench", "-h"])
        .arg(&list)
        .arg("-x")
        .arg(format!(
            "-i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
            key.display(),
            known_hosts.display()
        ))
        .arg("cat /etc/linkops/client_id")
        .output();
    let pssh = report(
        "parallel-ssh -p 200",
        "pssh",
        pssh,
        "[SUCCESS]",
        spec.count,
        started,
    );
    if !with_ansible {
        return Peers {
            pssh,
            ansible: None,
        };
    }
    let inventory = dir.join("ansible-inventory");
    let lines: String = (spec.first..spec.first + spec.count)
        .map(|index| {
            format!(
                "{} ansible_port={} ansible_user=bench ansible_ssh_private_key_file={}\n",
                simulated::address(index),
                simulated::PORT,
                key.display()
            )
        })
        .collect();
    std::fs::write(&inventory, format!("[bench]\n{lines}")).unwrap();
    let started = Instant::now();
    let ansible = Command::new("ansible")
        .args([
            "all",
            "-m",
            "raw",
            "-a",
            "cat /etc/linkops/client_id",
            "-f",
            "200",
            "-i",
        ])
        .arg(&inventory)
        .env("ANSIBLE_HOST_KEY_CHECKING", "True")
        .env(
            "ANSIBLE_SSH_ARGS",
            format!("-o UserKnownHostsFile={}", known_hosts.display()),
        )
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .output();
    let ansible = report(
        "ansible -m raw -f 200",
        "ansible-core",
        ansible,
        "| CHANGED |",
        spec.count,
        started,
    );
    Peers { pssh, ansible }
}

/// Says how a peer's run went; its time and answers when it ran.
fn report(
    tool: &str,
    package: &str,
    output: std::io::Result<std::process::Output>,
    answered: &str,
    machines: usize,
    started: Instant,
) -> Option<PeerRun> {
    let took = started.elapsed();
    match output {
        Ok(output) => {
            let answered = String::from_utf8_lossy(&output.stdout)
                .matches(answered)
                .count();
            println!(
                "{tool} on {machines} machines: {:.1} s, {answered} answered",
                took.as_secs_f64()
            );
            Some(PeerRun { took, answered })
        }
        Err(error) => {
            println!("{tool} not run ({error}): apt-get install {package}");
            None
        }
    }
}
