//! Per-call limits of a plugin, with their defaults and the ceilings no
//! installation may exceed.

use serde::{Deserialize, Serialize};

/// Limits for each call into a plugin (`init` or one `process` batch). Every
/// field may be overridden per installation, up to the `MAX_*` ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Wall-clock deadline of one call, enforced by epoch interruption.
    /// Default 500 ms.
    #[schema(minimum = 1, maximum = 30000)]
    #[serde(deserialize_with = "crate::whole::deserialize")]
    pub deadline_ms: u64,
    /// Largest linear memory the plugin may grow to. Default 64 MiB.
    #[schema(minimum = 1048576, maximum = 268435456)]
    #[serde(deserialize_with = "crate::whole::deserialize")]
    pub memory_bytes: u64,
    /// Fuel (roughly, wasm instructions) one call may burn; `None` means only
    /// the deadline bounds it. Default none.
    #[schema(minimum = 1, maximum = 9223372036854775807_u64)]
    #[serde(deserialize_with = "crate::whole::option")]
    pub fuel: Option<u64>,
    /// Most events one input event may fan out into. Default 1,000.
    #[schema(minimum = 1, maximum = 10000)]
    #[serde(deserialize_with = "crate::whole::deserialize")]
    pub max_fanout: u32,
    /// Largest event (payload and fields) a plugin may return. Default 1 MiB.
    #[schema(minimum = 1024, maximum = 8388608)]
    #[serde(deserialize_with = "crate::whole::deserialize")]
    pub max_event_bytes: u64,
}

impl PluginLimits {
    pub const MAX_DEADLINE_MS: u64 = 30_000;
    pub const MAX_MEMORY_BYTES: u64 = 256 << 20;
    pub const MAX_FANOUT: u32 = 10_000;
    pub const MAX_EVENT_BYTES: u64 = 8 << 20;

    /// Check every field against its ceiling; the error names the field.
    ///
    /// # Errors
    ///
    /// `(field, message)` for the first field out of range.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let check = |name, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err((name, format!("must be between {min} and {max}, got {value}")))
            } else {
                Ok(())
            }
        };
        check("deadline_ms", self.deadline_ms, 1, Self::MAX_DEADLINE_MS)?;
        check("memory_bytes", self.memory_bytes, 1 << 20, Self::MAX_MEMORY_BYTES)?;
        if let Some(fuel) = self.fuel {
            check("fuel", fuel, 1, u64::MAX / 2)?;
        }
        check("max_fanout", self.max_fanout.into(), 1, Self::MAX_FANOUT.into())?;
        check("max_event_bytes", self.max_event_bytes, 1024, Self::MAX_EVENT_BYTES)?;
        Ok(())
    }
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            deadline_ms: 500,
            memory_bytes: 64 << 20,
            fuel: None,
            max_fanout: 1_000,
            max_event_bytes: 1 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_out_of_range_fields_are_named() {
        assert_eq!(PluginLimits::default().validate(), Ok(()));
        let limits = PluginLimits { memory_bytes: PluginLimits::MAX_MEMORY_BYTES + 1, ..Default::default() };
        assert_eq!(limits.validate().unwrap_err().0, "memory_bytes");
        let limits = PluginLimits { deadline_ms: 0, ..Default::default() };
        assert_eq!(limits.validate().unwrap_err().0, "deadline_ms");
        let limits = PluginLimits { fuel: Some(0), ..Default::default() };
        assert_eq!(limits.validate().unwrap_err().0, "fuel");
    }
}
