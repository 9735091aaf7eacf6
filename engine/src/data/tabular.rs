//! Tabular classification data from CSV: each row is `D` numeric features then an integer class
//! label. The format is deliberately strict (no header line, every row the same width, labels
//! written as plain non-negative integers): a header or a stray column is reported with its line
//! number instead of being guessed around.

use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::loader::{LoaderPosition, permutation};
use crate::error::{EngineError, Result};

/// Stream tags for [`permutation`]: the train/validation split and the per-epoch batch order
/// must not reuse each other's random numbers even when given the same seed.
const EPOCH_ORDER_STREAM: u64 = 0;
const SPLIT_STREAM: u64 = 1;

#[derive(Clone, Debug)]
pub struct Tabular {
    /// `[N, D]`, row-major.
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    pub n_features: usize,
}

impl Tabular {
    /// Reads a CSV file, gunzipping it when the name ends in `.gz`. The feature count `D` is set
    /// by the first row. Blank lines are skipped and spaces around fields ignored.
    pub fn load_csv(path: &Path) -> Result<Self> {
        let file = super::open::open_regular(path)?;
        let gz = path.extension().is_some_and(|e| e == "gz");
        let input: Box<dyn Read> = if gz {
            Box::new(MultiGzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(file)
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(input);
        let mut record = csv::StringRecord::new();
        let mut features = Vec::new();
        let mut labels = Vec::new();
        let mut n_fields = 0;
        loop {
            match reader.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    let msg = e.to_string();
                    return Err(match e.into_kind() {
                        csv::ErrorKind::Io(io) => EngineError::io(path, io),
                        _ => EngineError::data(path, msg),
                    });
                }
            }
            let line = record.position().map_or(0, |p| p.line());
            let row_err = |msg: String| EngineError::data(path, format!("line {line}: {msg}"));
            if labels.is_empty() {
                n_fields = record.len();
                if n_fields < 2 {
                    return Err(row_err(format!(
                        "found {n_fields} field; each row needs at least one feature and a label"
                    )));
                }
            } else if record.len() != n_fields {
                return Err(row_err(format!(
                    "expected {n_fields} fields ({} features and a label, as on the first row), found {}",
                    n_fields - 1,
                    record.len()
                )));
            }
            for (col, field) in record.iter().take(n_fields - 1).enumerate() {
                match field.parse::<f32>() {
                    Ok(v) if v.is_finite() => features.push(v),
                    _ => {
                        return Err(row_err(format!(
                            "column {}: '{field}' is not a finite number",
                            col + 1
                        )));
                    }
                }
            }
            labels.push(
                parse_label(&record[n_fields - 1])
                    .map_err(|msg| row_err(format!("column {n_fields} (the label): {msg}")))?,
            );
        }
        if labels.is_empty() {
            return Err(EngineError::data(path, "empty file: no rows"));
        }
        Ok(Tabular {
            features,
            labels,
            n_features: n_fields - 1,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Max label + 1: labels are class indices, so a class missing from the data still counts.
    pub fn num_classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| m as usize + 1)
    }

    /// Returns `(train, val)`. The rows are shuffled by `permutation(N, seed, 0, SPLIT_STREAM)`
    /// (see [`permutation`]); the first `ceil(val_fraction · N)` shuffled rows are validation and
    /// the rest training, both in shuffled order. `val_fraction` is clamped to `[0, 1]`; 0 gives
    /// an empty validation set.
    pub fn split(&self, val_fraction: f64, seed: u64) -> (Tabular, Tabular) {
        let n = self.len();
        let order = permutation(n, seed, 0, SPLIT_STREAM);
        // `as` saturates: NaN and negatives give 0.
        let n_val = ((val_fraction * n as f64).ceil() as usize).min(n);
        let (val, train) = order.split_at(n_val);
        (self.select(train), self.select(val))
    }

    pub fn feature_row(&self, i: usize) -> &[f32] {
        &self.features[i * self.n_features..(i + 1) * self.n_features]
    }

    fn select(&self, rows: &[usize]) -> Tabular {
        Tabular {
            features: rows
                .iter()
                .flat_map(|&i| self.feature_row(i))
                .copied()
                .collect(),
            labels: rows.iter().map(|&i| self.labels[i]).collect(),
            n_features: self.n_features,
        }
    }
}

/// The largest label: the classifier's output layer has a row per class up to the largest
/// label, so one stray huge label (4294967295) would otherwise make a rank allocate a head of
/// billions of rows before training began.
pub const MAX_LABEL: u32 = 65_535;

fn parse_label(field: &str) -> std::result::Result<u32, String> {
    if let Ok(v) = field.parse::<u32>() {
        if v > MAX_LABEL {
            return Err(format!(
                "label {v} is above {MAX_LABEL}: labels are class indices, and convoy builds \
                 classifiers of at most {} classes",
                MAX_LABEL + 1
            ));
        }
        return Ok(v);
    }
    Err(match field.parse::<f64>() {
        Ok(v) if !v.is_finite() => format!("label {field} is not a finite number"),
        Ok(v) if v < 0.0 => {
            format!("label {field} is negative; labels are class indices 0, 1, 2, …")
        }
        Ok(v) if v.fract() != 0.0 => format!("label {field} is not an integer"),
        Ok(v) if v > f64::from(u32::MAX) => format!("label {field} is too large"),
        Ok(_) => format!("label {field} must be written as a plain integer"),
        Err(_) => format!("label '{field}' is not a number"),
    })
}

/// Per-feature standardization, fitted on training data and saved with the model so inference
/// applies the same transform.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Population mean and standard deviation per feature, accumulated in f64. A constant
    /// feature gets std 1 so it maps to 0 instead of NaN.
    pub fn fit(data: &Tabular) -> Self {
        let d = data.n_features;
        let n = data.len();
        let mut sum = vec![0f64; d];
        for i in 0..n {
            for (s, &x) in sum.iter_mut().zip(data.feature_row(i)) {
                *s += f64::from(x);
            }
        }
        let mean: Vec<f64> = sum
            .iter()
            .map(|s| if n == 0 { 0.0 } else { s / n as f64 })
            .collect();
        let mut sq = vec![0f64; d];
        for i in 0..n {
            for ((s, &x), m) in sq.iter_mut().zip(data.feature_row(i)).zip(&mean) {
                *s += (f64::from(x) - m).powi(2);
            }
        }
        let std = sq
            .iter()
            .map(|s| {
                let v = if n == 0 { 0.0 } else { (s / n as f64).sqrt() };
                if v > 0.0 { v as f32 } else { 1.0 }
            })
            .collect();
        Standardizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    /// # Panics
    /// If `data` has a different number of features than the data this was fitted on; check
    /// `mean.len()` against a loaded standardizer first.
    pub fn apply(&self, data: &mut Tabular) {
        assert_eq!(
            data.n_features,
            self.mean.len(),
            "standardizer was fitted on a different number of features"
        );
        if data.n_features == 0 {
            return;
        }
        for row in data.features.chunks_exact_mut(data.n_features) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
    }
}

/// Mini-batches of rows. Like the token loader, a global batch of `world·batch` rows is taken
/// from a per-epoch order (a pure function of `(seed, epoch)` when shuffling) and rank `r` takes
/// its `r`-th `batch` rows, so ranks agree without communicating. Rows left over after the last
/// full global batch are not used in that epoch.
pub struct TabularLoader {
    data: Tabular,
    batch: usize,
    rank: usize,
    world: usize,
    shuffle: bool,
    seed: u64,
    pos: LoaderPosition,
    /// Row order for `pos.epoch`.
    order: Vec<usize>,
}

impl TabularLoader {
    pub fn new(
        data: Tabular,
        batch: usize,
        rank: usize,
        world: usize,
        shuffle: bool,
        seed: u64,
    ) -> Result<Self> {
        if batch == 0 || world == 0 || rank >= world {
            return Err(EngineError::Spec(format!(
                "data: need batch ≥ 1, world ≥ 1 and rank < world; got batch {batch}, rank {rank}, world {world}"
            )));
        }
        let global = batch.saturating_mul(world);
        if data.len() < global {
            return Err(EngineError::Spec(format!(
                "data: {} rows are fewer than one global batch of world·batch = {world}·{batch} = {global} rows",
                data.len()
            )));
        }
        let mut loader = TabularLoader {
            data,
            batch,
            rank,
            world,
            shuffle,
            seed,
            pos: LoaderPosition {
                epoch: 0,
                shard: 0,
                sample: 0,
            },
            order: Vec::new(),
        };
        loader.order = loader.order_for(0);
        Ok(loader)
    }

    /// Fills `x` (`[batch, D]`) and `y` (`[batch]`) with this rank's rows of the next global
    /// batch.
    ///
    /// # Panics
    /// If a buffer has the wrong length: a bug in the caller, not bad data.
    pub fn next_batch(&mut self, x: &mut [f32], y: &mut [u32]) {
        let d = self.data.n_features;
        assert_eq!(
            x.len(),
            self.batch * d,
            "x buffer must hold batch·n_features values"
        );
        assert_eq!(y.len(), self.batch, "y buffer must hold batch labels");
        let start = (self.pos.sample * self.world + self.rank) * self.batch;
        let rows = &self.order[start..start + self.batch];
        for (k, &row) in rows.iter().enumerate() {
            x[k * d..(k + 1) * d].copy_from_slice(self.data.feature_row(row));
            y[k] = self.data.labels[row];
        }
        self.pos.sample += 1;
        if self.pos.sample == self.batches_per_epoch() {
            self.pos.sample = 0;
            self.pos.epoch += 1;
            self.order = self.order_for(self.pos.epoch);
        }
    }

    /// The position of the next batch; `shard` is always 0.
    pub fn position(&self) -> LoaderPosition {
        self.pos
    }

    pub fn set_position(&mut self, pos: LoaderPosition) -> Result<()> {
        if pos.shard != 0 || pos.sample >= self.batches_per_epoch() {
            return Err(EngineError::Spec(format!(
                "data: cannot resume tabular data at shard {}, sample {} (epoch {}): it has one shard of {} batches",
                pos.shard,
                pos.sample,
                pos.epoch,
                self.batches_per_epoch()
            )));
        }
        if pos.epoch != self.pos.epoch {
            self.order = self.order_for(pos.epoch);
        }
        self.pos = pos;
        Ok(())
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.data.len() / (self.world * self.batch)
    }

    pub fn data(&self) -> &Tabular {
        &self.data
    }

    fn order_for(&self, epoch: u64) -> Vec<usize> {
        if self.shuffle {
            permutation(self.data.len(), self.seed, epoch, EPOCH_ORDER_STREAM)
        } else {
            (0..self.data.len()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits_path() -> std::path::PathBuf {
        convoy_testkit::examples("data/digits.csv.gz")
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn load_err(dir: &Path, text: &str) -> String {
        Tabular::load_csv(&write(dir, "t.csv", text))
            .unwrap_err()
            .to_string()
    }

    /// N rows, 2 features: row i is [i, -i] with label i % 3.
    fn synthetic(n: usize) -> Tabular {
        Tabular {
            features: (0..n).flat_map(|i| [i as f32, -(i as f32)]).collect(),
            labels: (0..n).map(|i| (i % 3) as u32).collect(),
            n_features: 2,
        }
    }

    #[test]
    fn loads_digits() {
        let t = Tabular::load_csv(&digits_path()).unwrap();
        assert_eq!(t.len(), 1797);
        assert_eq!(t.n_features, 64);
        assert_eq!(t.features.len(), 1797 * 64);
        assert_eq!(t.num_classes(), 10);
        assert_eq!(&t.feature_row(0)[..4], &[0.0, 0.0, 5.0, 13.0]);
        assert_eq!(&t.labels[..2], &[0, 1]);
        assert!(t.features.iter().all(|&x| (0.0..=16.0).contains(&x)));
    }

    #[test]
    fn plain_csv_with_blank_lines_and_spaces() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tabular::load_csv(&write(dir.path(), "ok.csv", "1.5, 2,0\n\n-3,4e1 ,2\n")).unwrap();
        assert_eq!(t.features, [1.5, 2.0, -3.0, 40.0]);
        assert_eq!(t.labels, [0, 2]);
        assert_eq!(t.num_classes(), 3);
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = load_err(d, "1,2,0\n3,4,1\n5,1\n");
        assert!(
            err.contains("t.csv: line 3:")
                && err.contains("expected 3 fields")
                && err.contains("found 2"),
            "{err}"
        );
        let err = load_err(d, "1,2,0\n3,x,1\n");
        assert!(
            err.contains("line 2: column 2: 'x' is not a finite number"),
            "{err}"
        );
        let err = load_err(d, "f1,f2,label\n1,2,0\n");
        assert!(err.contains("line 1: column 1: 'f1'"), "{err}");
        assert!(load_err(d, "1,2,nan\n").contains("label nan is not a finite number"));
        assert!(load_err(d, "1,2,cat\n").contains("label 'cat' is not a number"));
        assert!(load_err(d, "1,inf,0\n").contains("column 2"));
        assert!(load_err(d, "1,2,-1\n").contains("label -1 is negative"));
        // A label the classifier's head would need billions of rows for.
        assert!(load_err(d, "1,2,4294967295\n").contains("label 4294967295 is above 65535"));
        assert!(Tabular::load_csv(&write(d, "max.csv", "1,2,65535\n")).is_ok());
        assert!(
            load_err(d, "1,2,0\n1,2,1.5\n")
                .contains("line 2: column 3 (the label): label 1.5 is not an integer")
        );
        assert!(load_err(d, "1,2,1.0\n").contains("plain integer"));
        assert!(load_err(d, "1\n").contains("at least one feature"));
        let err = load_err(d, "\n\n");
        assert!(err.contains("t.csv") && err.contains("empty file"), "{err}");
        let err = Tabular::load_csv(&write(d, "bad.csv.gz", "not gzip"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.csv.gz"), "{err}");
        let err = Tabular::load_csv(&d.join("none.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.csv"), "{err}");
    }

    #[test]
    fn split_is_deterministic_and_partitions_rows() {
        let t = synthetic(101);
        let (train, val) = t.split(0.2, 5);
        assert_eq!((train.len(), val.len()), (80, 21)); // ceil(20.2) = 21
        let (train2, val2) = t.split(0.2, 5);
        assert_eq!(
            (&train.features, &val.labels),
            (&train2.features, &val2.labels)
        );
        let (other, _) = t.split(0.2, 6);
        assert_ne!(other.features, train.features);
        let mut rows: Vec<f32> = train
            .features
            .iter()
            .chain(&val.features)
            .step_by(2)
            .copied()
            .collect();
        rows.sort_by(f32::total_cmp);
        assert_eq!(rows, (0..101).map(|i| i as f32).collect::<Vec<_>>());
        // Labels travel with their rows.
        for part in [&train, &val] {
            for i in 0..part.len() {
                assert_eq!(part.labels[i], (part.feature_row(i)[0] as u32) % 3);
            }
        }
        let (all, none) = t.split(0.0, 5);
        assert_eq!((all.len(), none.len(), none.num_classes()), (101, 0, 0));
    }

    #[test]
    fn standardizer_centers_and_scales_train() {
        let digits = Tabular::load_csv(&digits_path()).unwrap();
        let (mut train, mut val) = digits.split(0.2, 1);
        let s = Standardizer::fit(&train);
        s.apply(&mut train);
        s.apply(&mut val);
        let n = train.len() as f64;
        let mut constant = 0;
        for j in 0..train.n_features {
            let col: Vec<f64> = (0..train.len())
                .map(|i| f64::from(train.feature_row(i)[j]))
                .collect();
            let mean = col.iter().sum::<f64>() / n;
            let std = (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            assert!(mean.abs() < 1e-4, "feature {j}: mean {mean}");
            if s.std[j] == 1.0 && col.iter().all(|&x| x == 0.0) {
                constant += 1;
            } else {
                assert!((std - 1.0).abs() < 1e-3, "feature {j}: std {std}");
            }
        }
        assert!(
            constant >= 1,
            "digits has constant pixels; they must map to 0, not NaN"
        );
        assert!(val.features.iter().all(|x| x.is_finite()));
        let json = serde_json::to_string(&s).unwrap();
        let back: Standardizer = serde_json::from_str(&json).unwrap();
        assert_eq!(back.mean, s.mean);
    }

    fn take(l: &mut TabularLoader) -> (Vec<f32>, Vec<u32>) {
        let b = l.batch;
        let mut x = vec![0.0; b * l.data().n_features];
        let mut y = vec![0; b];
        l.next_batch(&mut x, &mut y);
        (x, y)
    }

    #[test]
    fn loader_rank_slices_without_shuffle() {
        // 14 rows, batch 2, world 3: global batch 6, 2 batches per epoch, 2 rows unused.
        let mut loaders: Vec<TabularLoader> = (0..3)
            .map(|r| TabularLoader::new(synthetic(14), 2, r, 3, false, 0).unwrap())
            .collect();
        assert_eq!(loaders[0].batches_per_epoch(), 2);
        for step in 0..5 {
            for (r, l) in loaders.iter_mut().enumerate() {
                assert_eq!(
                    l.position(),
                    LoaderPosition {
                        epoch: step / 2,
                        shard: 0,
                        sample: step as usize % 2
                    }
                );
                let (x, y) = take(l);
                let first = (step as usize % 2) * 6 + r * 2;
                assert_eq!(
                    x,
                    [
                        first as f32,
                        -(first as f32),
                        first as f32 + 1.0,
                        -(first as f32) - 1.0
                    ]
                );
                assert_eq!(y, [(first % 3) as u32, ((first + 1) % 3) as u32]);
            }
        }
    }

    #[test]
    fn loader_shuffle_ranks_partition_each_epoch() {
        let mut loaders: Vec<TabularLoader> = (0..2)
            .map(|r| TabularLoader::new(synthetic(12), 3, r, 2, true, 9).unwrap())
            .collect();
        let mut epochs = Vec::new();
        for _ in 0..2 {
            let mut seen = Vec::new();
            for _ in 0..2 {
                for l in loaders.iter_mut() {
                    seen.extend(take(l).0.iter().step_by(2).map(|&v| v as usize));
                }
            }
            let mut sorted = seen.clone();
            sorted.sort();
            assert_eq!(sorted, (0..12).collect::<Vec<_>>());
            epochs.push(seen);
        }
        assert_ne!(epochs[0], epochs[1]);
        assert_ne!(epochs[0], (0..12).collect::<Vec<_>>());
    }

    #[test]
    fn loader_resumes_exactly() {
        for shuffle in [false, true] {
            let mut reference = TabularLoader::new(synthetic(50), 4, 1, 2, shuffle, 3).unwrap();
            let all: Vec<_> = (0..20).map(|_| take(&mut reference)).collect();
            for k in [0, 5, 6, 7, 13] {
                let mut l = TabularLoader::new(synthetic(50), 4, 1, 2, shuffle, 3).unwrap();
                for _ in 0..k {
                    take(&mut l);
                }
                let mut fresh = TabularLoader::new(synthetic(50), 4, 1, 2, shuffle, 3).unwrap();
                fresh.set_position(l.position()).unwrap();
                for want in &all[k..k + 6] {
                    assert_eq!(&take(&mut fresh), want, "shuffle={shuffle} resume at {k}");
                }
            }
        }
    }

    #[test]
    fn loader_rejects_bad_setups_and_positions() {
        let err = TabularLoader::new(synthetic(5), 3, 0, 2, false, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("5 rows") && err.contains("= 6 rows"), "{err}");
        assert!(TabularLoader::new(synthetic(5), 1, 2, 2, false, 0).is_err());
        let mut l = TabularLoader::new(synthetic(10), 2, 0, 1, false, 0).unwrap();
        assert!(
            l.set_position(LoaderPosition {
                epoch: 0,
                shard: 1,
                sample: 0
            })
            .is_err()
        );
        assert!(
            l.set_position(LoaderPosition {
                epoch: 0,
                shard: 0,
                sample: 5
            })
            .is_err()
        );
        assert!(
            l.set_position(LoaderPosition {
                epoch: 3,
                shard: 0,
                sample: 4
            })
            .is_ok()
        );
    }
}
