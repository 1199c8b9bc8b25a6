//! What one host can hold: deployment-wide caps on local instances (each a `redis-server`
//! process on this machine) across all organizations. Quotas bound each organization; without
//! these, many organizations each within their quota could still exhaust the host.

/// The host's caps, from the deployment's configuration (`instances.max_local_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    pub max_local_instances: u32,
    pub max_local_memory_bytes: u64,
}

/// Which host cap a new local instance would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostLimit {
    MaxLocalInstances,
    MaxLocalMemory,
}

impl HostLimit {
    /// The configuration key of the cap, as errors name it.
    pub fn as_str(self) -> &'static str {
        match self {
            HostLimit::MaxLocalInstances => "max_local_instances",
            HostLimit::MaxLocalMemory => "max_local_memory_mb",
        }
    }
}

impl HostCapacity {
    /// Whether a local instance of `memory_bytes` fits beside `instances` existing ones that
    /// reserve `used_bytes` together.
    pub fn admits(self, instances: u64, used_bytes: u64, memory_bytes: u64) -> Result<(), HostLimit> {
        if instances >= u64::from(self.max_local_instances) {
            return Err(HostLimit::MaxLocalInstances);
        }
        if used_bytes.saturating_add(memory_bytes) > self.max_local_memory_bytes {
            return Err(HostLimit::MaxLocalMemory);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_and_memory_inclusive() {
        let cap = HostCapacity { max_local_instances: 2, max_local_memory_bytes: 40 };
        assert_eq!(cap.admits(0, 0, 40), Ok(()));
        assert_eq!(cap.admits(1, 16, 24), Ok(()));
        assert_eq!(cap.admits(1, 16, 25), Err(HostLimit::MaxLocalMemory));
        assert_eq!(cap.admits(2, 0, 1), Err(HostLimit::MaxLocalInstances));
        assert_eq!(cap.admits(1, u64::MAX, 1), Err(HostLimit::MaxLocalMemory));
    }
}
