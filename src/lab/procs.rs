//! Stopping the processes a lab started, by recorded pid, and only those.

use std::path::Path;
use std::time::Duration;

use crate::process::{alive, stat};

/// Whether the command line of `pid` mentions `tag` (a path only this lab
/// host's process has), so a recycled pid is never signalled.
pub fn is_ours(pid: u32, tag: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let tag = tag.as_os_str().as_encoded_bytes();
    cmdline.windows(tag.len()).any(|w| w == tag)
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| matches!(stat(p), Some((_, ppid)) if ppid == pid))
        .collect()
}

pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; pids here were checked as ours.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Waits until every pid in `pids` is gone, up to `timeout`.
pub async fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !pids.iter().any(|&p| alive(p)) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the lab process `pid` if it is still the one berth started: SIGTERM
/// (a container powers off), then SIGKILL to it and its children (a
/// container's init, which takes its whole pid namespace with it).
pub async fn stop(pid: u32, tag: &Path, grace: Duration) -> Result<(), String> {
    if !alive(pid) {
        return Ok(());
    }
    if !is_ours(pid, tag) {
        return Err(format!(
            "pid {pid} is no longer the lab's process (its command line lacks {}); left alone",
            tag.display()
        ));
    }
    signal(pid, libc::SIGTERM);
    if wait_gone(&[pid], grace).await {
        return Ok(());
    }
    let mut pids = children(pid);
    pids.push(pid);
    for &p in &pids {
        signal(p, libc::SIGKILL);
    }
    if wait_gone(&pids, Duration::from_secs(5)).await {
        Ok(())
    } else {
        Err(format!("pid {pid} did not exit after SIGKILL"))
    }
}
