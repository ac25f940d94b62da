//! Parsers and checks for scalar values: durations, sizes, names and hostnames.
//! Each returns a message suitable for a diagnostic, without location.

use std::time::Duration;

/// Parses a humantime duration such as `"10s"` or `"250ms"`.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration \"{text}\": {e}; expected a number with a unit, like \"10s\", \"250ms\" or \"1m30s\"")
    })
}

const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
];

const SIZE_HELP: &str =
    "expected integer bytes or a string like \"64KiB\" (units: B, KB, MB, GB, KiB, MiB, GiB)";

/// Parses a size string: an integer followed by a unit, e.g. `"64KiB"` or `"1 MB"`.
pub(crate) fn size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let unit = unit.trim_start();
    if digits.is_empty() {
        return Err(format!("invalid size \"{text}\": {SIZE_HELP}"));
    }
    let Some(&(_, factor)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(if unit.is_empty() {
            format!("invalid size \"{text}\": a size string needs a unit; {SIZE_HELP}")
        } else {
            format!("invalid size \"{text}\": unknown unit \"{unit}\"; {SIZE_HELP}")
        });
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

/// Lowercase letters, digits and '-': app names and region codes.
pub(crate) fn check_slug(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{what} \"{text}\" contains {c:?}; only lowercase letters a-z, digits 0-9 and '-' are allowed"
        ));
    }
    Ok(())
}

/// Validates a hostname (`name` or `*.name`) and returns it lowercased.
pub(crate) fn hostname(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    dns_name(name).map_err(|why| {
        format!("invalid hostname \"{text}\": {why}; expected a DNS name like \"example.com\" or a wildcard like \"*.example.com\"")
    })?;
    Ok(lower)
}

fn dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label \"{label}\" is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!("it contains {c:?}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label \"{label}\" starts or ends with '-'"));
        }
    }
    Ok(())
}

/// An HTTP method: an RFC 9110 token, uppercase.
pub(crate) fn http_method(text: &str) -> Result<(), String> {
    const TCHAR_EXTRA: &str = "!#$%&'*+-.^_`|~";
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || TCHAR_EXTRA.contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid HTTP method \"{text}\"; expected an uppercase method such as \"GET\" or \"HEAD\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("64KiB"), Ok(65536));
        assert_eq!(size("1 MB"), Ok(1_000_000));
        assert_eq!(size("3GiB"), Ok(3 << 30));
        assert_eq!(size("12B"), Ok(12));
        assert!(size("12").is_err());
        assert!(size("KiB").is_err());
        assert!(size("1.5MiB").is_err());
        assert!(size("1kib").is_err());
        assert!(size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname("Demo.LocalHost").as_deref(), Ok("demo.localhost"));
        assert_eq!(hostname("*.demo.io").as_deref(), Ok("*.demo.io"));
        assert!(hostname("*").is_err());
        assert!(hostname("a.*.b").is_err());
        assert!(hostname("a..b").is_err());
        assert!(hostname("-a.b").is_err());
        assert!(hostname("a_b.c").is_err());
        assert!(hostname("a.b.").is_err());
    }

    #[test]
    fn methods() {
        assert!(http_method("GET").is_ok());
        assert!(http_method("M-SEARCH").is_ok());
        assert!(http_method("get").is_err());
        assert!(http_method("GE T").is_err());
        assert!(http_method("").is_err());
    }
}
