//! A sampled profile in pprof's format (`perftools.profiles.Profile`, the
//! profile.proto that `go tool pprof` reads), encoded with prost.

use std::collections::HashMap;

use prost::Message;
use tern_sampler::{Profile, Symbols};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProfileProto {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Interns strings into the profile's table, whose entry 0 must be "".
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        let mut strings = Strings::default();
        strings.add("");
        strings
    }

    fn add(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = i64::try_from(self.table.len()).unwrap_or(i64::MAX);
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// The profile with two values per sample, as Go's CPU profiles have: the number
/// of samples and the CPU time they stand for.
pub fn encode(profile: &Profile, symbols: &Symbols, started_unix_nanos: i64) -> Vec<u8> {
    let period = 1_000_000_000 / i64::from(profile.frequency_hz.max(1));
    let mut strings = Strings::new();
    let samples_count = ValueType {
        r#type: strings.add("samples"),
        unit: strings.add("count"),
    };
    let cpu_nanos = ValueType {
        r#type: strings.add("cpu"),
        unit: strings.add("nanoseconds"),
    };
    let thread_key = strings.add("thread");
    let mut functions: HashMap<(i64, i64), u64> = HashMap::new();
    let mut function_list = Vec::new();
    let mut locations: HashMap<usize, u64> = HashMap::new();
    let mut location_list = Vec::new();
    let mut samples = Vec::with_capacity(profile.stacks.len());
    for stack in &profile.stacks {
        let mut location_id = Vec::with_capacity(stack.frames.len());
        for &address in &stack.frames {
            let id = *locations.entry(address).or_insert_with(|| {
                let line = symbols
                    .at(address)
                    .iter()
                    .map(|f| {
                        let name = strings.add(&f.name);
                        let filename = strings.add(f.file.as_deref().unwrap_or(""));
                        let next = function_list.len() as u64 + 1;
                        let function_id = *functions.entry((name, filename)).or_insert_with(|| {
                            function_list.push(Function {
                                id: next,
                                name,
                                system_name: name,
                                filename,
                            });
                            next
                        });
                        Line {
                            function_id,
                            line: f.line.map_or(0, i64::from),
                        }
                    })
                    .collect();
                let id = location_list.len() as u64 + 1;
                location_list.push(Location {
                    id,
                    address: address as u64,
                    line,
                });
                id
            });
            location_id.push(id);
        }
        let count = i64::try_from(stack.count).unwrap_or(i64::MAX);
        samples.push(Sample {
            location_id,
            value: vec![count, count.saturating_mul(period)],
            label: vec![Label {
                key: thread_key,
                str: strings.add(&stack.thread),
            }],
        });
    }
    let cpu_period_type = cpu_nanos.clone();
    ProfileProto {
        sample_type: vec![samples_count, cpu_nanos],
        sample: samples,
        location: location_list,
        function: function_list,
        string_table: strings.table,
        time_nanos: started_unix_nanos,
        duration_nanos: i64::try_from(profile.duration.as_nanos()).unwrap_or(i64::MAX),
        period_type: Some(cpu_period_type),
        period,
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[inline(never)]
    fn here() -> usize {
        std::hint::black_box(here as *const () as usize) + 1
    }

    #[test]
    fn every_reference_in_the_encoded_profile_resolves() {
        let a = here();
        let profile = Profile {
            stacks: vec![
                tern_sampler::Stack {
                    thread: "worker".into(),
                    frames: vec![a, 0x10],
                    count: 3,
                },
                tern_sampler::Stack {
                    thread: "other".into(),
                    frames: vec![0x10],
                    count: 2,
                },
            ],
            dropped: 0,
            shallow: 0,
            duration: Duration::from_secs(1),
            frequency_hz: 100,
        };
        let symbols = profile.symbolize();
        let bytes = encode(&profile, &symbols, 1);
        let decoded = ProfileProto::decode(bytes.as_slice()).unwrap();
        let s = &decoded.string_table;
        assert_eq!(s[0], "");
        assert_eq!(decoded.sample.len(), 2);
        assert_eq!(decoded.sample[0].value, vec![3, 3 * 10_000_000]);
        assert_eq!(decoded.period, 10_000_000);
        // 0x10 is one location shared by both samples.
        assert_eq!(decoded.location.len(), 2);
        assert_eq!(
            decoded.sample[0].location_id[1],
            decoded.sample[1].location_id[0]
        );
        let string = |i: i64| s[usize::try_from(i).unwrap()].as_str();
        assert_eq!(string(decoded.sample[1].label[0].str), "other");
        let names: Vec<&str> = decoded.location[0]
            .line
            .iter()
            .map(|l| {
                let f = &decoded.function[usize::try_from(l.function_id).unwrap() - 1];
                assert_eq!(f.id, l.function_id);
                string(f.name)
            })
            .collect();
        assert!(names.iter().any(|n| n.ends_with("here")), "{names:?}");
    }
}
