//! Tick labels: how a tier's tick is written in its topic name (`delay.1s`)
//! and its consumer group (`<group_id>.1s`), and read back.

/// Short label of a tick, used in tier topic names: `1s`, `1m`, `1h`, `1d`,
/// `50ms`, `90s`.
pub fn tick_label(tick_ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    UNITS
        .iter()
        .find(|(unit, _)| tick_ms % unit == 0)
        .map(|(unit, name)| format!("{}{name}", tick_ms / unit))
        .unwrap_or_else(|| format!("{tick_ms}ms"))
}

/// The tick (ms) of a tier label as [`tick_label`] writes it (`50ms`, `1s`,
/// `1m`, `1h`, `1d`); None for anything else, including a label written
/// another way (`60s` is `1m`).
pub fn parse_tick_label(label: &str) -> Option<i64> {
    let digits = label.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = label.split_at(digits);
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    let tick_ms = number.parse::<i64>().ok()?.checked_mul(unit_ms)?;
    (tick_ms > 0 && tick_label(tick_ms) == label).then_some(tick_ms)
}
