//! Figures: every measured value by section and name (runs kept, median/min/max derived), and the
//! notes printed with them.

#[derive(Debug, Clone)]
pub struct Figure {
    pub section: String,
    pub name: String,
    pub unit: String,
    pub runs: Vec<f64>,
}

impl Figure {
    pub fn sorted(&self) -> Vec<f64> {
        let mut v = self.runs.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn add(&mut self, section: &str, name: &str, unit: &str, value: f64) {
        if let Some(f) = self
            .figures
            .iter_mut()
            .find(|f| f.section == section && f.name == name)
        {
            f.runs.push(value);
            return;
        }
        self.figures.push(Figure {
            section: section.into(),
            name: name.into(),
            unit: unit.into(),
            runs: vec![value],
        });
    }

    pub fn get(&self, section: &str, name: &str) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|f| f.section == section && f.name == name)
    }

    pub fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("[bench] note: {s}");
        self.notes.push(s);
    }
}

pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 100.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}
