//! The experiment page, `GET /admin/experiments/<name>`: HTML with inline
//! SVG plots (latency CDF per arm, cold-start rate per arm with 95%
//! intervals) around the report's JSON (`report.rs`).
//!
//! Why server-rendered SVG: the page must work from the admin listener
//! alone (no CDN, no JavaScript framework), open in any browser and render
//! headless for a screenshot; a few hundred points per arm are cheap to
//! draw as polylines.

use std::fmt::Write;

use serde_json::Value;

use super::report::{quantile, METHOD};
use crate::state::experiments::{ArmView, Experiment};

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e12 {
                format!("{f:.0}")
            } else {
                format!("{f:.4}")
            }
        }
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

/// The HTML report of one experiment.
pub fn page(e: &Experiment, v: &[ArmView], j: &Value) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>experiment {name}</title>\
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}}\
table{{border-collapse:collapse;margin:8px 0 20px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
th{{background:#f2f2f2}}td:first-child,th:first-child{{text-align:left}}.sig{{color:#b00;font-weight:bold}}\
.plots{{display:flex;gap:24px;flex-wrap:wrap}}small{{color:#666}}</style></head><body>\
<h1>Experiment <code>{name}</code></h1><p>functions: <code>{funcs}</code> &middot; assignment: <code>{assign}</code></p>",
        name = esc(&e.name),
        funcs = esc(&e.functions.join(", ")),
        assign = fmt(&j["assign"]),
    );
    h.push_str("<h2>Arms</h2><table><tr><th>arm</th><th>policy</th><th>weight</th><th>calls</th><th>errors</th><th>error rate</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>cold starts</th><th>cold-start rate</th><th>queue mean ms</th><th>load spread (CV)</th><th>calls per worker</th></tr>");
    for (i, a) in j["arms"].as_array().into_iter().flatten().enumerate() {
        let per: Vec<String> = a["calls_per_worker"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, c)| format!("{}: {}", esc(k), c))
                    .collect()
            })
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td><span style=\"color:{c}\">&#9632;</span> {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
            fmt(&a["name"]),
            fmt(&a["policy"]),
            fmt(&a["weight"]),
            fmt(&a["calls"]),
            fmt(&a["errors"]),
            fmt(&a["error_rate"]),
            fmt(&a["latency_ms"]["p50"]),
            fmt(&a["latency_ms"]["p95"]),
            fmt(&a["latency_ms"]["p99"]),
            fmt(&a["cold_starts"]),
            fmt(&a["cold_start_rate"]),
            fmt(&a["queue_ms"]["mean"]),
            fmt(&a["load_spread_cv"]),
            per.join("<br>"),
            c = COLORS[i % COLORS.len()],
        );
    }
    h.push_str("</table>");
    for c in j["comparisons"].as_array().into_iter().flatten() {
        let _ = write!(
            h,
            "<h2>{} vs {} (control)</h2><table><tr><th>metric</th><th>control</th><th>arm</th><th>diff (arm &minus; control)</th><th>95% CI</th><th>p</th><th>significant</th><th>method</th></tr>",
            fmt(&c["arm"]),
            fmt(&c["control"])
        );
        for (k, m) in c["metrics"].as_object().into_iter().flatten() {
            let ci = match m["ci95"].as_array() {
                Some(a) if a.len() == 2 => format!("[{}, {}]", fmt(&a[0]), fmt(&a[1])),
                _ => "–".into(),
            };
            let sig = m["significant"].as_bool().unwrap_or(false);
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td style=\"text-align:left\">{}</td></tr>",
                esc(k),
                fmt(&m["control"]),
                fmt(&m["arm"]),
                fmt(&m["diff"]),
                ci,
                fmt(&m["p_value"]),
                if sig { " class=\"sig\"" } else { "" },
                if sig { "yes" } else { "no" },
                fmt(&m["method"]),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<div class=\"plots\">");
    h.push_str(&cdf_svg(v));
    h.push_str(&cold_svg(v));
    h.push_str("</div>");
    let _ = writeln!(h, "<p><small>{}</small></p></body></html>", esc(METHOD));
    h
}

const W: f64 = 520.0;
const H: f64 = 320.0;
const L: f64 = 56.0;
const R: f64 = 16.0;
const T: f64 = 28.0;
const B: f64 = 44.0;

/// Latency CDF per arm, log-scaled x axis.
fn cdf_svg(v: &[ArmView]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"latency CDF per arm\"><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/><text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Latency CDF per arm</text>",
        W / 2.0
    );
    let all = v.iter().flat_map(|a| a.latency_ms.iter().copied());
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for x in all {
        if x > 0.0 {
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    if !lo.is_finite() || hi <= 0.0 {
        s.push_str("<text x=\"50%\" y=\"50%\" text-anchor=\"middle\">no samples yet</text></svg>");
        return s;
    }
    let (l0, l1) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let px = |x: f64| L + (x.max(10f64.powf(l0)).log10() - l0) / (l1 - l0) * (W - L - R);
    let py = |y: f64| T + (1.0 - y) * (H - T - B);
    // Axes and grid.
    for k in 0..=4 {
        let y = k as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\">{y:.2}</text>",
            W - R,
            L - 4.0,
            py(y) + 4.0,
            y0 = py(y)
        );
    }
    let mut d = l0;
    while d <= l1 + 1e-9 {
        let x = px(10f64.powf(d));
        let label = if d >= 0.0 {
            format!("{}", 10f64.powf(d))
        } else {
            format!("{:.*}", (-d) as usize, 10f64.powf(d))
        };
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{T}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\">{label}</text>",
            H - B,
            H - B + 14.0
        );
        d += 1.0;
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">latency (ms, log scale)</text><text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\" font-size=\"12\">fraction of calls</text>",
        (L + W - R) / 2.0,
        H - 8.0,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0
    );
    for (i, a) in v.iter().enumerate() {
        let n = a.latency_ms.len();
        if n == 0 {
            continue;
        }
        let mut pts = String::new();
        let steps = 200.min(n);
        for k in 0..=steps {
            let q = k as f64 / steps as f64;
            let x = quantile(&a.latency_ms, q.max(1.0 / n as f64));
            let _ = write!(pts, "{:.1},{:.1} ", px(x), py(q));
        }
        let c = COLORS[i % COLORS.len()];
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{pts}\"/><rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{} ({})</text>",
            L + 10.0,
            T + 8.0 + 16.0 * i as f64,
            L + 24.0,
            T + 17.0 + 16.0 * i as f64,
            esc(&a.name),
            esc(&a.policy)
        );
    }
    s.push_str("</svg>");
    s
}

/// Cold-start rate per arm, with 95% normal-approximation intervals.
fn cold_svg(v: &[ArmView]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"cold-start rate per arm\"><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/><text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Cold-start rate per arm (95% CI)</text>",
        W / 2.0
    );
    let ci = |a: &ArmView| {
        let p = a.cold_rate();
        let n = a.timed.max(1) as f64;
        let h = 1.96 * (p * (1.0 - p) / n).sqrt();
        (p, (p - h).max(0.0), (p + h).min(1.0))
    };
    let top = v.iter().map(|a| ci(a).2).fold(0.0f64, f64::max).max(0.01);
    let top = (top * 1.15).min(1.0);
    let py = |y: f64| T + (1.0 - y / top) * (H - T - B);
    for k in 0..=4 {
        let y = top * k as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\">{:.1}%</text>",
            W - R,
            L - 4.0,
            py(y) + 4.0,
            y * 100.0,
            y0 = py(y)
        );
    }
    let n = v.len().max(1) as f64;
    let slot = (W - L - R) / n;
    for (i, a) in v.iter().enumerate() {
        let (p, lo, hi) = ci(a);
        let c = COLORS[i % COLORS.len()];
        let x = L + slot * i as f64 + slot * 0.2;
        let w = slot * 0.6;
        let cx = x + w / 2.0;
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{c}\" opacity=\"0.8\"/>\
<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\"/>\
<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\"/>\
<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\">{} ({:.1}%, {} of {})</text>",
            py(p),
            (H - B) - py(p),
            py(lo),
            py(hi),
            cx - 6.0,
            cx + 6.0,
            py(lo),
            py(lo),
            cx - 6.0,
            cx + 6.0,
            py(hi),
            py(hi),
            H - B + 16.0,
            esc(&a.name),
            p * 100.0,
            a.cold,
            a.timed
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{L}\" x2=\"{}\" y1=\"{b}\" y2=\"{b}\" stroke=\"#444\"/></svg>",
        W - R,
        b = H - B
    );
    s
}
