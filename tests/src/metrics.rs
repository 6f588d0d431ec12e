//! The VMM's metrics file (`--metrics-path`): one JSON object per flush, each a set of groups
//! of counters (`{"net": {"tx_packets_count": 1, ...}, ...}`). A test looks at each counter
//! summed over the lines, by its `group.name`.

use std::collections::BTreeMap;
use std::path::Path;

/// Every counter of a metrics file, summed over its lines.
#[derive(Debug, Default)]
pub struct Metrics(BTreeMap<String, u64>);

impl Metrics {
    /// Reads `path`; a missing file, a line that is not a JSON object and a value that is
    /// not a counter count as nothing.
    pub fn read(path: &Path) -> Metrics {
        Metrics::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// Sums the counters of metrics lines.
    pub fn parse(text: &str) -> Metrics {
        let mut sums = BTreeMap::new();
        for line in text.lines() {
            let Ok(serde_json::Value::Object(groups)) =
                serde_json::from_str::<serde_json::Value>(line)
            else {
                continue;
            };
            for (group, v) in groups {
                if let serde_json::Value::Object(fields) = v {
                    for (name, value) in fields {
                        *sums.entry(format!("{group}.{name}")).or_insert(0) +=
                            value.as_u64().unwrap_or(0);
                    }
                }
            }
        }
        Metrics(sums)
    }

    /// Counter `group.name`, 0 when the file never had it.
    pub fn sum(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Counter `group.name`, panicking with the names there are when it never appeared.
    pub fn get(&self, name: &str) -> u64 {
        *self.0.get(name).unwrap_or_else(|| {
            panic!(
                "no metric {name} in {:?}",
                self.0.keys().collect::<Vec<_>>()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_lines_by_group_and_name() {
        let m = Metrics::parse(
            "{\"net\": {\"tx_packets_count\": 1, \"rx\": 2}, \"utc_timestamp_ms\": 5}\n\
             not json\n\
             {\"net\": {\"tx_packets_count\": 3, \"name\": \"x\"}}\n",
        );
        assert_eq!(m.get("net.tx_packets_count"), 4);
        assert_eq!(m.get("net.rx"), 2);
        assert_eq!(m.get("net.name"), 0);
        assert_eq!(m.sum("net.missing"), 0);
        assert_eq!(m.sum("utc_timestamp_ms"), 0);
    }
}
