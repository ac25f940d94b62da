//! A flame graph as SVG, drawn from sampled stacks: root at the bottom, each frame
//! as wide as the share of samples it was on the stack for, callees above callers.
//! Drawn here rather than by an SVG library so that the admin port pulls in no XML
//! parser (the usual one has had denial-of-service advisories).

use std::collections::BTreeMap;
use std::fmt::Write as _;

const WIDTH: f64 = 1200.0;
const ROW: f64 = 16.0;
const HEADER: f64 = 36.0;
const CHAR_WIDTH: f64 = 7.0;

#[derive(Default)]
struct Node {
    value: u64,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn add(&mut self, path: &[String], count: u64) {
        self.value += count;
        if let Some((first, rest)) = path.split_first() {
            self.children
                .entry(first.clone())
                .or_default()
                .add(rest, count);
        }
    }

    fn depth(&self) -> usize {
        1 + self.children.values().map(Node::depth).max().unwrap_or(0)
    }
}

/// Renders stacks (root first) with their sample counts.
pub fn render(samples: impl IntoIterator<Item = (Vec<String>, u64)>, title: &str) -> String {
    let mut root = Node::default();
    for (path, count) in samples {
        root.add(&path, count);
    }
    let depth = root.depth();
    let height = HEADER + depth as f64 * ROW + 10.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#f8f8f0"/>
<text x="{x}" y="18" text-anchor="middle" font-size="15">{title}</text>
<text x="10" y="{y}" font-size="11">{samples} samples; hover a frame for its share</text>
"##,
        x = WIDTH / 2.0,
        y = HEADER - 6.0,
        title = escape(title),
        samples = root.value,
    );
    if root.value > 0 {
        let scale = WIDTH / root.value as f64;
        draw(&mut svg, "all", &root, 0.0, 0, depth, scale, root.value);
    }
    svg.push_str("</svg>\n");
    svg
}

#[allow(clippy::too_many_arguments)]
fn draw(
    out: &mut String,
    name: &str,
    node: &Node,
    x: f64,
    level: usize,
    depth: usize,
    scale: f64,
    total: u64,
) {
    let w = node.value as f64 * scale;
    if w < 0.1 {
        return;
    }
    let y = HEADER + (depth - 1 - level) as f64 * ROW;
    let pct = 100.0 * node.value as f64 / total as f64;
    let label = fit(name, w);
    let _ = writeln!(
        out,
        r#"<g><title>{t} ({v} samples, {pct:.2}%)</title><rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{h}" fill="{c}" rx="2"/><text x="{tx:.2}" y="{ty:.1}">{label}</text></g>"#,
        t = escape(name),
        v = node.value,
        h = ROW - 1.0,
        c = color(name),
        tx = x + 3.0,
        ty = y + ROW - 4.0,
        label = escape(&label),
    );
    let mut cx = x;
    for (child, n) in &node.children {
        draw(out, child, n, cx, level + 1, depth, scale, total);
        cx += n.value as f64 * scale;
    }
}

/// The name cut to what fits in `width` pixels.
fn fit(name: &str, width: f64) -> String {
    let max = ((width - 6.0) / CHAR_WIDTH).floor();
    if max < 3.0 {
        return String::new();
    }
    let max = max as usize;
    if name.chars().count() <= max {
        return name.to_owned();
    }
    let mut s: String = name.chars().take(max.saturating_sub(2)).collect();
    s.push_str("..");
    s
}

/// A warm colour that is stable for a name, as flame graphs are drawn.
fn color(name: &str) -> String {
    let h = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    let r = 205 + (h % 50);
    let g = 80 + ((h >> 8) % 150);
    let b = 40 + ((h >> 16) % 40);
    format!("rgb({r},{g},{b})")
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split(';').map(str::to_owned).collect()
    }

    #[test]
    fn widths_follow_samples_and_names_are_escaped() {
        let svg = render(
            vec![
                (path("main;serve;<T as Read>::poll_read"), 30),
                (path("main;serve;write"), 10),
                (path("main;idle"), 60),
            ],
            "cpu",
        );
        assert!(svg.starts_with("<?xml"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("100 samples"));
        // 'all' spans the full width; 'idle' 60%, 'serve' 40%.
        assert!(svg.contains(r#"<title>all (100 samples, 100.00%)</title><rect x="0.00" y="84.0" width="1200.00""#), "{svg}");
        assert!(svg.contains("<title>idle (60 samples, 60.00%)</title>"));
        assert!(svg.contains(r#"width="720.00""#));
        assert!(svg.contains("<title>serve (40 samples, 40.00%)</title>"));
        assert!(svg.contains("&lt;T as Read&gt;::poll_read"));
        assert!(!svg.contains("<T as"));
        // Deeper frames are drawn higher up (smaller y).
        let y_of = |name: &str| {
            let at = svg.find(&format!("<title>{name} (")).unwrap();
            let y = &svg[at..].split("y=\"").nth(1).unwrap();
            y.split('"').next().unwrap().parse::<f64>().unwrap()
        };
        assert!(y_of("serve") < y_of("main"));
        assert!(y_of("write") < y_of("serve"));
    }

    #[test]
    fn no_samples_is_still_a_valid_picture() {
        let svg = render(Vec::new(), "empty");
        assert!(svg.contains("0 samples"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
