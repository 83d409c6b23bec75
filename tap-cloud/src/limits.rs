//! How long each field a browser or a sensor sends may be before it is stored. Every one
//! ends up on a page, in the API and in the CLI's tables: without a bound, one sensor's
//! 4 MiB host name or one analyst's 2 MB assignee is 4 MiB in every answer that lists
//! them. A longer field is refused (the portal answers 400, ingest INVALID_ARGUMENT) with
//! its name, its length and the limit; nothing of the request is stored. Events have
//! their own checks in `ingest`.

/// Incident assignee (portal).
pub const ASSIGNEE: usize = 256;
/// Incident comment (portal).
pub const COMMENT: usize = 4096;
/// A sensor's id as it names itself (`sensors add` allows 128).
pub const SENSOR_ID: usize = 128;
/// Register: the sensor's host name (a DNS name is at most 255 bytes).
pub const HOSTNAME: usize = 255;
pub const VERSION: usize = 64;
/// Register: DC addresses or subnets, each at most this long. Generous: a refused
/// registration or heartbeat keeps a sensor from sending anything, so a real one (a site
/// with many DCs, an alert per silent DC) must never meet these counts.
pub const MONITORED_DCS: usize = 1024;
pub const MONITORED_DC: usize = 64;
pub const CAPABILITIES: usize = 16;
pub const CAPABILITY: usize = 32;
/// Heartbeat: active health alerts (one per silent DC among them).
pub const HEALTH_ALERTS: usize = 1024;
pub const HEALTH_ALERT: usize = 512;
/// Heartbeat: counters, by name.
pub const HEALTH_COUNTERS: usize = 256;
pub const COUNTER_NAME: usize = 64;

/// `value` is at most `max` bytes, or why not, naming `field`.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{field} of {} bytes (at most {max})", value.len()));
    }
    Ok(())
}

/// At most `max_items` entries of at most `max_each` bytes, or why not, naming `field` (and
/// the entry, by its position).
pub fn list<'a>(
    field: &str,
    items: impl ExactSizeIterator<Item = &'a str>,
    max_items: usize,
    max_each: usize,
) -> Result<(), String> {
    if items.len() > max_items {
        return Err(format!("{field}: {} entries (at most {max_items})", items.len()));
    }
    for (i, item) in items.enumerate() {
        text(&format!("{field}[{i}]"), item, max_each)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_the_field_its_length_and_the_limit() {
        assert_eq!(text("hostname", &"h".repeat(255), HOSTNAME), Ok(()));
        assert_eq!(text("hostname", &"h".repeat(256), HOSTNAME).unwrap_err(), "hostname of 256 bytes (at most 255)");
        let dcs = ["10.0.0.1".to_string(), "d".repeat(65)];
        assert_eq!(
            list("monitored_dcs", dcs.iter().map(String::as_str), 64, 64).unwrap_err(),
            "monitored_dcs[1] of 65 bytes (at most 64)"
        );
        assert_eq!(
            list("capabilities", ["a"; 17].into_iter(), 16, 32).unwrap_err(),
            "capabilities: 17 entries (at most 16)"
        );
        assert_eq!(list("capabilities", ["a"; 16].into_iter(), 16, 32), Ok(()));
    }
}
