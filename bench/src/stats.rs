//! Min / median / max of a measurement's runs.

#[derive(Clone, Copy)]
pub struct Stats {
    pub min: f64,
    pub med: f64,
    pub max: f64,
    pub n: usize,
}

pub fn stats(v: &[f64]) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Stats {
        min: s[0],
        med,
        max: s[n - 1],
        n,
    })
}
