//! The dashboard's traffic numbers, read from the same Prometheus text that
//! `/metrics` serves: requests by status class and error code, the request
//! duration histogram summed over apps.

use std::collections::BTreeMap;

use serde::Serialize;

/// Counters since start; the page turns two readings into rates and percentiles.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Traffic {
    /// Requests answered, by status class (`2xx` … `5xx`).
    pub by_class: BTreeMap<String, u64>,
    /// Requests answered with one of Tern's error codes (docs/errors.md), by code.
    pub by_code: BTreeMap<String, u64>,
    /// `tern_request_duration_seconds` over all apps: (upper bound in seconds,
    /// cumulative count), the last bound infinite.
    pub duration_buckets: Vec<(f64, u64)>,
}

/// One sample line of the text format: its name, labels and value.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Sample<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the counters out of Prometheus text; lines it does not know are skipped.
pub fn read_traffic(text: &str) -> Traffic {
    let mut t = Traffic::default();
    let mut buckets: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    for sample in text.lines().filter_map(parse_line) {
        let n = sample.value.max(0.0) as u64;
        match sample.name {
            "tern_requests_total" => {
                if let Some(class) = sample.label("status").and_then(status_class) {
                    let e = t.by_class.entry(class).or_default();
                    *e = e.saturating_add(n);
                }
                if let Some(code) = sample.label("code").filter(|c| *c != "ok") {
                    let e = t.by_code.entry(code.to_owned()).or_default();
                    *e = e.saturating_add(n);
                }
            }
            "tern_request_duration_seconds_bucket" => {
                let Some(le) = sample.label("le").and_then(parse_bound) else {
                    continue;
                };
                // Keyed by the bound's bits: bounds are positive, so their order
                // as integers is their order as numbers.
                let entry = buckets.entry(le.to_bits()).or_insert((le, 0));
                entry.1 = entry.1.saturating_add(n);
            }
            _ => {}
        }
    }
    t.duration_buckets = buckets.into_values().collect();
    t
}

fn status_class(status: &str) -> Option<String> {
    let first = status.chars().next()?;
    (status.len() == 3 && ('1'..='5').contains(&first)).then(|| format!("{first}xx"))
}

fn parse_bound(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        // `+ 0.0` turns -0.0 into 0.0, whose bits sort first.
        _ => le.parse().ok().filter(|v: &f64| *v >= 0.0).map(|v| v + 0.0),
    }
}

/// `name{k="v",...} value [timestamp]`, or `name value`; `None` for comments and
/// anything malformed.
fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).filter(|&i| i > 0)?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end + 1..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The labels after `{`, and what follows the closing `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = &s[..eq];
        s = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE tern_requests_total counter
tern_requests_total{app="web",code="ok",status="200"} 90
tern_requests_total{app="api",code="ok",status="204"} 5
tern_requests_total{app="-",code="no_app",status="404"} 3
tern_requests_total{app="web",code="no_machine",status="503"} 2
# TYPE tern_request_duration_seconds histogram
tern_request_duration_seconds_bucket{app="web",le="0.001"} 10
tern_request_duration_seconds_bucket{app="web",le="0.01"} 80
tern_request_duration_seconds_bucket{app="web",le="+Inf"} 92
tern_request_duration_seconds_bucket{app="api",le="0.001"} 5
tern_request_duration_seconds_bucket{app="api",le="0.01"} 5
tern_request_duration_seconds_bucket{app="api",le="+Inf"} 5
tern_request_duration_seconds_sum{app="web"} 1.5
tern_connections_total{port="8080"} 7
tern_machine_load{app="a \"quoted\" app",machine="m1",port="80"} 12
"#;

    #[test]
    fn reads_what_metrics_serves() {
        let t = read_traffic(TEXT);
        assert_eq!(t.by_class.get("2xx"), Some(&95));
        assert_eq!(t.by_class.get("4xx"), Some(&3));
        assert_eq!(t.by_class.get("5xx"), Some(&2));
        assert_eq!(t.by_code.get("no_app"), Some(&3));
        assert_eq!(t.by_code.get("no_machine"), Some(&2));
        assert!(!t.by_code.contains_key("ok"));
        assert_eq!(
            t.duration_buckets,
            vec![(0.001, 15), (0.01, 85), (f64::INFINITY, 97)]
        );
    }

    #[test]
    fn quoted_label_values_and_junk_do_not_derail_it() {
        let line = r#"x{a="say \"hi\", then }",b="2"} 3"#;
        let s = parse_line(line).expect("parsed");
        assert_eq!(s.label("a"), Some(r#"say "hi", then }"#));
        assert_eq!(s.label("b"), Some("2"));
        assert_eq!(s.value, 3.0);
        for junk in [
            "x{a=\"open 1",
            "x{a=1} 2",
            "x{",
            "{} 1",
            "x NaNish",
            "x{a=\"1\"}",
        ] {
            assert!(parse_line(junk).is_none(), "{junk}");
        }
        assert_eq!(read_traffic("garbage\n\u{0}{}\"\n"), Traffic::default());
        // Huge values saturate; a negative zero bound sorts first.
        let t = read_traffic(
            "tern_requests_total{code=\"ok\",status=\"200\"} +Inf\n\
             tern_requests_total{code=\"ok\",status=\"201\"} 5\n\
             tern_request_duration_seconds_bucket{le=\"+Inf\"} 2\n\
             tern_request_duration_seconds_bucket{le=\"-0.0\"} 1\n",
        );
        assert_eq!(t.by_class.get("2xx"), Some(&u64::MAX));
        assert_eq!(t.duration_buckets, vec![(0.0, 1), (f64::INFINITY, 2)]);
    }
}
